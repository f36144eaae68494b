"""Issue 14's semantic check against a brute-force count written here: for each labelled query, each
searchable metric's distances by the plain float64 formulas (tests/core/test_evaluation.formulas),
the query left out, rows sorted by (distance, position); agreement@k = same-label share of the
first k; AP = mean of precision@i at each same-label rank i."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.errors import InvalidInput, LimitExceeded
from core.evaluation import evaluate, evaluate_queries
from core.labels import check_k, label_hits
from tests.core.test_evaluation import formulas

SEARCHABLE = ("euc", "cos", "tri", "ced")


def brute(xq: np.ndarray, rest: np.ndarray, labels: list[int], label: int, t: float, k: int
          ) -> dict[str, tuple[float, float]]:
    """(agreement@k, AP) per searchable metric for one query, by counting."""
    f = formulas(xq, rest, t)
    out = {}
    for m in SEARCHABLE:
        d = f[m]
        order = sorted(range(len(d)), key=lambda i: (d[i], i))
        kk = min(k, len(order))
        agree = sum(labels[i] == label for i in order[:kk]) / kk
        hits, precisions = 0, []
        for rank, i in enumerate(order, 1):
            if labels[i] == label:
                hits += 1
                precisions.append(hits / rank)
        out[m] = (agree, sum(precisions) / len(precisions) if precisions else math.nan)
    return out


def clustered(rng: np.random.Generator, n: int, d: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.normal(0, 3, size=(classes, d))
    y = rng.integers(0, classes, size=n)
    X = centres[y] + rng.normal(0, 2.5, size=(n, d)) + rng.normal(0, 2, size=(n, 1))
    return X, y


def test_label_agreement_and_map_over_queries_equal_the_brute_force_count(rng):
    X, y = clustered(rng, 400, 24, 6)
    codes = y.copy()
    codes[::9] = -1  # rows without a label: never a match, and no query of their own
    for t in (0.5, 8.0):
        qe = evaluate_queries(X, t, n_queries=12, seed=4, labels=codes, k=7)
        res = qe.results[0]
        want: dict[str, list[tuple[float, float]]] = {m: [] for m in SEARCHABLE}
        for q in qe.query_rows:
            if codes[q] < 0:
                continue
            rest_labels = list(np.delete(codes, q))
            for m, v in brute(X[q], np.delete(X, q, axis=0), rest_labels, int(codes[q]), t, 7).items():
                want[m].append(v)
        labelled = sum(codes[q] >= 0 for q in qe.query_rows)
        assert 0 < labelled < 12  # the -1 rows were drawn too
        for m in SEARCHABLE:
            s = res.labels[m]
            assert (s.k, s.n_queries, s.n_map) == (7, labelled, labelled)
            assert s.agreement == pytest.approx(np.mean([a for a, _ in want[m]]), abs=1e-12), m
            assert s.map == pytest.approx(np.mean([ap for _, ap in want[m]]), abs=1e-12), m


def test_one_stored_query_is_scored_without_itself(rng):
    X, y = clustered(rng, 150, 16, 4)
    ev = evaluate(X, [1.0, 20.0], exclude=33, labels=y, k=5)
    for res in ev.results:
        want = brute(X[33], np.delete(X, 33, axis=0), list(np.delete(y, 33)), int(y[33]), res.t, 5)
        for m in SEARCHABLE:
            assert (res.labels[m].agreement, res.labels[m].map) == pytest.approx(want[m], abs=1e-12)
    # a query vector outside X, labelled by the caller
    ev = evaluate(X, 3.0, query=X[33] + 0.01, labels=y, query_label=int(y[33]), k=5)
    want = brute(X[33] + 0.01, X, list(y), int(y[33]), 3.0, 5)
    assert ev.results[0].labels["tri"].agreement == pytest.approx(want["tri"][0])


def test_exact_ties_are_broken_by_row_position(rng):
    X = rng.normal(0, 3, size=(60, 10))
    X[5] = X[6] = X[0] + 0.05  # two identical nearest neighbours of row 0, under every metric
    y = np.arange(60) % 3
    y[0], y[5], y[6] = 2, 1, 2  # the earlier of the tied pair has another label
    res = evaluate(X, 2.0, exclude=0, labels=y, k=1).results[0]
    for m in SEARCHABLE:
        assert res.labels[m].agreement == 0.0, m  # row 5 comes first: not the query's label
    want = brute(X[0], np.delete(X, 0, axis=0), list(np.delete(y, 0)), 2, 2.0, 1)
    assert {m: res.labels[m].map for m in SEARCHABLE} == pytest.approx({m: want[m][1] for m in SEARCHABLE})


def test_label_hits_edges():
    d = np.array([0.3, 0.1, 0.2, np.nan])
    codes = np.array([1, 0, 1, 1])
    assert label_hits(d, codes, 1, 2) == (0.5, pytest.approx((1 / 2 + 2 / 3 + 3 / 4) / 3))  # NaN ranks last
    assert label_hits(d, codes, 1, 99)[0] == 0.75  # k beyond the rows counts all of them
    a, ap = label_hits(d, codes, 7, 2)
    assert a == 0.0 and math.isnan(ap)  # nobody shares the label: AP undefined


def test_bad_label_input_names_the_field(rng):
    X = rng.normal(size=(20, 4))
    with pytest.raises(InvalidInput) as err:
        evaluate(X, 1.0, exclude=0, labels=np.zeros(19, dtype=int))
    assert err.value.field == "labels"
    with pytest.raises(InvalidInput) as err:
        evaluate(X, 1.0, mode="many_to_many", labels=np.zeros(20, dtype=int))
    assert err.value.field == "labels"
    with pytest.raises(InvalidInput) as err:
        evaluate(X, 1.0, query=X[0], labels=np.zeros(20, dtype=int))
    assert err.value.field == "labels"
    with pytest.raises(LimitExceeded):
        check_k(10_000)
    with pytest.raises(InvalidInput):
        check_k(0)


def test_real_imagenet_crops_label_check_equals_the_brute_force_count(imagenet):
    X_all, ids = imagenet
    X = np.asarray(X_all[:1200], dtype=np.float32)
    photos = [i.split("~c")[0] for i in ids[:1200]]
    code = {p: j for j, p in enumerate(dict.fromkeys(photos))}
    y = np.array([code[p] for p in photos])
    qe = evaluate_queries(X, [1.0, 10.0], n_queries=4, seed=2, labels=y, k=10)
    for res in qe.results:
        per = [brute(X[q], np.delete(X, q, axis=0), list(np.delete(y, q)), int(y[q]), res.t, 10)
               for q in qe.query_rows]
        for m in SEARCHABLE:
            assert res.labels[m].agreement == pytest.approx(np.mean([p[m][0] for p in per]), abs=1e-12), m
            assert res.labels[m].map == pytest.approx(np.mean([p[m][1] for p in per]), abs=1e-12), m
        # crops of one photo are near each other: far above the chance rate (~1/250)
        assert res.labels["tri"].agreement > 0.3


def test_label_check_on_the_parallel_path_equals_the_brute_force_count(rng):
    # 12,000 x 12 = 144k elements: above core.divergences._PARALLEL_MIN, the kernel runs threaded
    X, y = clustered(rng, 12_000, 12, 40)
    qe = evaluate_queries(X.astype(np.float32), 4.0, n_queries=3, seed=9, labels=y, k=25)
    A = X.astype(np.float32).astype(np.float64)
    per = [brute(A[q], np.delete(A, q, axis=0), list(np.delete(y, q)), int(y[q]), 4.0, 25) for q in qe.query_rows]
    for m in SEARCHABLE:
        s = qe.results[0].labels[m]
        assert s.agreement == pytest.approx(np.mean([p[m][0] for p in per]), abs=1e-12), m
        assert s.map == pytest.approx(np.mean([p[m][1] for p in per]), abs=1e-12), m
