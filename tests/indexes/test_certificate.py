"""The TRI certificate: c H^2 <= TRI <= H^2 within [m, M], and a certified answer is never wrong."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from indexes import embed, exact, knn
from indexes.knn import IndexSet, IndexSpec
from tests.indexes.brute import brute


@given(W=arrays(np.float64, st.tuples(st.just(2), st.integers(1, 40)), elements=st.floats(0.0, 1.0)),
       lo=st.floats(1e-9, 0.5), width=st.floats(0.0, 1.0))
def test_tri_is_bracketed_by_c_times_squared_hellinger_and_squared_hellinger(W, lo, width):
    # any two non-negative vectors with every entry in [m, M] (the per-coordinate bound needs no sum)
    m, M = lo, lo + width * (1 - lo)
    p, q = m + W[0] * (M - m), m + W[1] * (M - m)
    tri = 0.5 * ((p - q) ** 2 / (p + q)).sum()
    # (sqrt p - sqrt q)^2 as (p - q)^2 / (sqrt p + sqrt q)^2: the same value without the cancellation
    # of sqrt p - sqrt q when p ~ q (there tri ~ h2, and the direct form's rounding alone, ~1e-7
    # relative at p - q ~ 1e-10, broke the bracket: hypothesis 6.x found such a pair)
    h2 = ((p - q) ** 2 / (np.sqrt(p) + np.sqrt(q)) ** 2).sum()
    c = float(exact.contraction(m, M))
    assert 0.5 <= c <= 1.0
    assert c * h2 <= tri * (1 + 1e-12) + 1e-300
    assert tri <= h2 * (1 + 1e-12) + 1e-300


def test_contraction_tends_to_one_for_nearly_equal_probabilities():
    assert float(exact.contraction(1e-3, 1e-3)) == 1.0
    assert abs(float(exact.contraction(0.0, 0.5)) - 0.5) < 1e-15


@given(data=st.data(), n=st.integers(45, 90), d=st.integers(2, 12), k=st.integers(1, 4),
       t=st.sampled_from([0.5, 1.0, 10.0, 100.0, 1000.0]), levels=st.integers(2, 6),
       spare=st.integers(1, 30))
def test_a_certified_tri_answer_always_equals_brute_force(data, n, d, k, t, levels, spare):
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # few distinct logit values: many ties and near-ties, where a loose certificate would lie
    X = (rng.integers(0, levels, size=(n, d)) * data.draw(st.sampled_from([0.1, 1.0, 7.0]))).astype(np.float32)
    X += rng.normal(0, data.draw(st.sampled_from([0.0, 1e-3, 0.3])), X.shape).astype(np.float32)
    iset = IndexSet(d, [IndexSpec("tri", t)])
    iset.upsert(np.arange(n), X, seq=1)
    Q = np.concatenate([X[:2].astype(np.float64), rng.normal(0, 2, (2, d))])
    with pytest.MonkeyPatch.context() as mp:
        # few candidates beyond k: the certificate is tested where it is tightest
        mp.setattr(knn, "_kprime", lambda k: k + spare)
        hits = iset.search(IndexSpec("tri", t), Q, k)
    for q, h in zip(Q, hits):
        truth = brute("tri", q, X, t)
        kth = np.sort(truth)[k - 1]
        # every returned row is truly within the k best (ties at the k-th value allowed)
        assert np.all(truth[h.ids] <= kth * (1 + 1e-9) + 1e-18), h.how
        np.testing.assert_allclose(h.distances, np.sort(truth)[:k], rtol=1e-7, atol=1e-18)


def test_lower_bound_is_below_every_exact_distance_outside_the_candidates(imagenet):
    X = np.asarray(imagenet[0][:600])
    for t in (1.0, 10.0, 100.0):
        iset = IndexSet(1000, [IndexSpec("tri", t), IndexSpec("ced", t)])
        iset.upsert(np.arange(600), X, seq=1)
        for metric in ("tri", "ced"):
            ix = iset._pick(metric, t, None)
            qs = embed.queries(metric, t, np.asarray(imagenet[0][700:703], dtype=np.float64))
            D, pos = ix.candidates(qs.vectors, 40, iset._table)
            c = exact.contraction(np.minimum(qs.pmin, ix.stats.pmin), np.maximum(qs.pmax, ix.stats.pmax))
            lb = exact.lower_bound(metric, ix.width, D[:, -1], qs.norm, ix.stats.norm, c if metric == "tri" else None)
            for r in range(3):
                truth = brute(metric, imagenet[0][700 + r], X, t)
                outside = np.setdiff1d(np.arange(600), pos[r])
                assert np.all(truth[outside] >= lb[r])
