"""core.evaluation against scipy.stats.spearmanr on float64 formulas written here (paper eqs. 2-8,
16-17), the paper's MATLAB tie-breaking by brute force, and the real dev data (issue 5)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.special import log_softmax
from scipy.stats import spearmanr

from core.divergences import all_logits
from core.errors import InvalidInput, LimitExceeded
from core.evaluation import (
    EVAL_METRICS,
    MANY_TO_MANY_MAX_ROWS,
    MAX_QUERIES,
    TRI_EXACT_RHO,
    evaluate,
    evaluate_queries,
    roughness_guide,
    shepard_data,
)


def formulas(xq: np.ndarray, X: np.ndarray, t: float) -> dict[str, np.ndarray]:
    """Every metric of one query against each row, plain float64 (Table 1; eqs. 2-6)."""
    xq, X = np.asarray(xq, np.float64), np.asarray(X, np.float64)
    lq, lP = log_softmax(xq / t), log_softmax(X / t, axis=1)
    q, P = np.exp(lq), np.exp(lP)
    js = jensenshannon(np.broadcast_to(q, P.shape), P, base=2, axis=1) ** 2
    h = lambda v: -v * np.log2(np.where(v > 0, v, 1.0))  # h(x) = -x log2 x, 0 log 0 = 0
    # scipy returns inf when whole terms underflow to 0 (t = 0.01): eq. 4 as written there
    js = np.where(np.isfinite(js), js, 1.0 - 0.5 * (h(q) + h(P) - h(q + P)).sum(axis=1))
    return {
        "ced": -(q * lP).sum(axis=1),  # eq. 2
        "kld": (q * (lq - lP)).sum(axis=1),  # eq. 3, from logs: P underflows to 0 at t = 0.01
        "jsd": js,  # eq. 4
        "tri": 0.5 * np.divide((q - P) ** 2, q + P, out=np.zeros_like(P), where=q + P > 0).sum(axis=1),
        "hellinger": ((np.sqrt(q) - np.sqrt(P)) ** 2).sum(axis=1),
        "euc": ((X - xq) ** 2).sum(axis=1),  # eq. 6
        "cos": 1.0 - X @ xq / (np.linalg.norm(X, axis=1) * np.linalg.norm(xq)),
    }


def searchable_best(rho: dict[str, float], margin: float) -> str:
    """Issue 14's rule, in plain Python: of euc, cos, tri (cheapest first), the cheapest whose rho is
    within `margin` of the highest of the three."""
    order = [m for m in ("euc", "cos", "tri") if m in rho]
    top = max(rho[m] for m in order)
    return next(m for m in order if top - rho[m] <= margin)


def mr(x: np.ndarray, t: float) -> float:
    """Measure of roughness (eq. 17) of softmax(x/t), by the formula."""
    p = np.exp(log_softmax(np.asarray(x, np.float64) / t))
    return float(((p - 1.0 / p.size) ** 2).sum())


def paper_rho(ref: np.ndarray, other: np.ndarray) -> float:
    """The MATLAB spearman_rho.m ranks by brute force: sort by (own value, other value), eq. 8."""
    n = ref.size
    rx, ry = np.empty(n), np.empty(n)
    rx[sorted(range(n), key=lambda i: (ref[i], other[i]))] = np.arange(1, n + 1)
    ry[sorted(range(n), key=lambda i: (other[i], ref[i]))] = np.arange(1, n + 1)
    return float(1 - 6 * ((rx - ry) ** 2).sum() / (n**3 - n))


def pava(y: np.ndarray) -> np.ndarray:
    """Isotonic (non-decreasing) least squares by pool-adjacent-violators, as a plain loop."""
    blocks: list[list[float]] = []  # [mean, weight]
    for v in y:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, w2), (m1, w1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2])
    return np.concatenate([np.full(int(w), m) for m, w in blocks])


@pytest.mark.parametrize("t", [0.5, 3.0, 10.0, 100.0, 1000.0])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_one_to_many_rho_equals_scipy_spearmanr_of_the_formulas(rng, t, dtype):
    X = (rng.normal(0, 4, size=(400, 37)) + rng.normal(0, 2, size=(400, 1))).astype(dtype)
    xq = rng.normal(0, 4, size=37)
    got = evaluate(X, t, query=xq).results[0]
    want = formulas(xq, X, t)
    assert got.n == 400
    for name in ("euc", "cos", "tri", "jsd", "hellinger"):
        expected = spearmanr(want["ced"], want[name]).statistic
        assert got.rho[name].value == pytest.approx(expected, abs=1e-9), name
        assert got.rho[name].reason is None


def test_kernel_columns_equal_the_formulas_from_low_to_high_temperature(rng):
    # the fused one-pass kernel behind evaluate (JSD by series below |r| = 0.05, one log above)
    X = rng.normal(0, 5, size=(200, 301)).astype(np.float32)
    xq = rng.normal(0, 5, size=301)
    for t in (0.01, 1.0, 100.0, 1000.0, 1e4):
        got, want = all_logits(xq, X, t), formulas(xq, X, t)
        for j, name in enumerate(("ced", "kld", "jsd", "tri", "hellinger", "euc", "cos")):
            # scipy's JSD cancels at high t (~1e-12 of the value); KLD = CED - H(q) is exact only
            # to ~1e-16 of CED (core.divergences.kld), a visible part of KLD itself at t = 1e4
            scale = np.abs(want["ced" if name == "kld" else name]).max()
            np.testing.assert_allclose(got[:, j], want[name], rtol=1e-8, atol=1e-12 * scale, err_msg=name)


@pytest.mark.parametrize("t", [0.05, 1.0, 10.0, 1000.0])
def test_kld_rho_is_exactly_one_for_a_fixed_query(rng, t):
    # eq. 9: KLD(q:p) = CED(q:p) - H(q), a constant shift for a fixed query
    X = rng.normal(0, 3, size=(500, 64))
    res = evaluate(X, t, exclude=7, metrics=["kld", "tri"]).results[0]
    assert res.rho["kld"].value == 1.0
    assert res.recommendation.best == "tri"  # kld is never "best": it is CED by construction


def test_ties_get_average_ranks_like_scipy_and_paper_ranks_like_matlab(rng):
    base = rng.normal(0, 2, size=(40, 12))
    X = np.repeat(base, 5, axis=0)  # every row 5 times: ties in CED and in every metric
    X[::7] = np.round(X[::7])  # and some rows that tie on no one
    xq = rng.normal(0, 2, size=12)
    want = formulas(xq, X, 2.0)
    avg = evaluate(X, 2.0, query=xq).results[0]
    paper = evaluate(X, 2.0, query=xq, ranks="paper").results[0]
    for name in ("euc", "cos", "tri", "jsd", "hellinger"):
        assert avg.rho[name].value == pytest.approx(spearmanr(want["ced"], want[name]).statistic, abs=1e-9)
        assert paper.rho[name].value == pytest.approx(paper_rho(want["ced"], want[name]), abs=1e-9)
        assert paper.rho[name].value > avg.rho[name].value  # breaking ties in agreement inflates rho


def test_paper_ranks_equal_average_ranks_without_ties(rng):
    X = rng.normal(0, 3, size=(300, 20))
    a = evaluate(X, 5.0, exclude=0).results[0]
    p = evaluate(X, 5.0, exclude=0, ranks="paper").results[0]
    for name in EVAL_METRICS:
        assert p.rho[name].value == pytest.approx(a.rho[name].value, abs=1e-12)


def test_many_to_many_scores_every_pair_with_the_earlier_row_as_query(rng):
    X = rng.normal(0, 3, size=(30, 16)) * rng.uniform(0.3, 3, size=(30, 1))
    t = 2.0
    cols: dict[str, list[float]] = {m: [] for m in ("ced", "ced_reversed", *EVAL_METRICS)}
    for i in range(30):
        for j in range(i + 1, 30):
            f = formulas(X[i], X[j : j + 1], t)
            for m in ("ced", *EVAL_METRICS):
                cols[m].append(float(f[m][0]))
            cols["ced_reversed"].append(float(formulas(X[j], X[i : i + 1], t)["ced"][0]))
    res = evaluate(X, t, mode="many_to_many").results[0]
    assert res.n == 30 * 29 // 2 and res.query_roughness is None
    for m in EVAL_METRICS:
        assert res.rho[m].value == pytest.approx(spearmanr(cols["ced"], cols[m]).statistic, abs=1e-9), m
    # the argument order matters for the asymmetric CED: the other order gives another answer
    assert abs(spearmanr(cols["ced_reversed"], cols["tri"]).statistic - res.rho["tri"].value) > 1e-3
    assert res.rho["kld"].value < 1.0  # KLD = CED - H(row i): not a constant shift across pairs
    assert res.mean_roughness == pytest.approx(np.mean([mr(x, t) for x in X]), rel=1e-9)


def test_a_stored_query_is_left_out_of_its_compared_set(rng):
    X = rng.normal(0, 3, size=(120, 24))
    by_row = evaluate(X, [1.0, 10.0], exclude=17)
    by_vector = evaluate(np.delete(X, 17, axis=0), [1.0, 10.0], query=X[17])
    assert by_row.n_rows == 119
    for a, b in zip(by_row.results, by_vector.results):
        assert a.n == b.n == 119
        assert {m: r.value for m, r in a.rho.items()} == pytest.approx({m: r.value for m, r in b.rho.items()})


def test_each_temperature_reports_roughness_ranking_and_recommendation(rng):
    X = rng.normal(0, 3, size=(200, 30))
    xq = rng.normal(0, 3, size=30)
    ev = evaluate(X, [10.0, 0.5, 10.0], query=xq)  # duplicates dropped, order kept
    assert [r.t for r in ev.results] == [10.0, 0.5]
    for r in ev.results:
        assert r.query_roughness == pytest.approx(mr(xq, r.t), rel=1e-9)
        assert r.mean_roughness == pytest.approx(np.mean([mr(x, r.t) for x in X]), rel=1e-9)
        values = [r.rho[m].value for m in r.ranked]
        assert values == sorted(values, reverse=True) and set(r.ranked) == set(EVAL_METRICS)
        rec = r.recommendation
        assert rec.best == searchable_best({m: r.rho[m].value for m in EVAL_METRICS}, 1e-4)
        assert rec.evaluation_only == max(("jsd", "hellinger"), key=lambda m: r.rho[m].value)
        assert rec.tri_exact == (r.rho["tri"].value >= TRI_EXACT_RHO) and rec.threshold == TRI_EXACT_RHO
        assert rec.euc_beats_cos == (r.rho["euc"].value > r.rho["cos"].value)
        assert rec.best in rec.advice and r.seconds >= 0
    only_tri = evaluate(X, 1.0, query=xq, metrics="tri").results[0].recommendation
    assert only_tri.best == "tri" and only_tri.euc_beats_cos is None


def test_identical_rows_give_nan_with_a_reason_not_a_crash(rng):
    X = np.tile(rng.normal(size=8), (10, 1))
    res = evaluate(X, 1.0, query=rng.normal(size=8)).results[0]
    assert all(np.isnan(r.value) and r.reason for r in res.rho.values())
    assert res.recommendation.best is None and res.recommendation.tri_exact is None


def test_absurdly_large_query_logits_give_nan_with_a_reason_not_a_crash(rng):
    X = rng.normal(size=(20, 6)).astype(np.float32)
    xq = np.array([1e300, -1e300, 0.0, 1.0, 2.0, 3.0])  # euc overflows to inf in float64
    res = evaluate(X, 1.0, query=xq).results[0]
    assert np.isnan(res.rho["euc"].value) and "too large" in res.rho["euc"].reason
    assert res.recommendation.euc_beats_cos is None


def test_many_queries_are_summarised_from_the_single_query_results(rng):
    X = rng.normal(0, 3, size=(150, 20))
    summary = evaluate_queries(X, [1.0, 20.0], n_queries=6, seed=3)
    assert len(set(summary.query_rows)) == 6
    assert summary.query_rows == evaluate_queries(X, 1.0, n_queries=6, seed=3).query_rows
    for k, res in enumerate(summary.results):
        singles = [evaluate(X, res.t, exclude=r).results[0] for r in summary.query_rows]
        for m in EVAL_METRICS:
            v = np.array([s.rho[m].value for s in singles])
            s = res.rho[m]
            assert (s.mean, s.median, s.min, s.max, s.std) == pytest.approx(
                (v.mean(), np.median(v), v.min(), v.max(), v.std()), abs=1e-12)
            assert s.n_defined == 6
        assert res.n == 149 and res.n_queries == 6
        assert res.query_roughness == pytest.approx(np.mean([s.query_roughness for s in singles]))
        assert res.recommendation.best in ("euc", "cos", "tri")
        assert res.recommendation.rho == res.rho[res.recommendation.best].mean


def test_shepard_data_has_the_isotonic_line_and_the_full_rho(rng):
    X = rng.normal(0, 3, size=(600, 16))
    xq = rng.normal(0, 3, size=16)
    sd = shepard_data(X, 2.0, "euc", query=xq, max_points=100, seed=1)
    f = formulas(xq, X, 2.0)
    assert sd.n == 600 and sd.ced.shape == sd.values.shape == sd.fitted.shape == (100,)
    assert sd.rho.value == pytest.approx(spearmanr(f["ced"], f["euc"]).statistic, abs=1e-9)
    order = np.argsort(f["ced"], kind="stable")
    line = np.empty(600)
    line[order] = pava(f["euc"][order])
    rows = np.abs(f["ced"][None, :] - sd.ced[:, None]).argmin(axis=1)  # the sampled rows
    assert len(set(rows)) == 100
    np.testing.assert_allclose(sd.values, f["euc"][rows], rtol=1e-9)
    np.testing.assert_allclose(sd.fitted, line[rows], rtol=1e-9)
    assert np.all(np.diff(sd.ced) >= 0) and np.all(np.diff(sd.fitted) >= 0)


def test_roughness_guide_finds_the_target_temperature_and_reports_mr(rng):
    X = rng.normal(0, 3, size=(50, 40))
    g = roughness_guide(X, target=1e-4, temperatures=[1.0, 10.0])
    assert g.n == 50 and g.target is not None and g.target.reachable
    assert np.mean([mr(x, g.target.t) for x in X]) == pytest.approx(1e-4, rel=1e-4)
    assert [t for t, _ in g.at] == [1.0, 10.0]
    for t, value in g.at:
        assert value == pytest.approx(np.mean([mr(x, t) for x in X]), rel=1e-9)
    assert roughness_guide(X, temperatures=[2.0]).target is None


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"metrics": ["tri", "manhattan"]}, "metrics"),
    ({"metrics": ["ced"]}, "metrics"),
    ({"metrics": []}, "metrics"),
    ({"temperatures": 0.0}, "temperatures"),
    ({"temperatures": -1.0}, "temperatures"),
    ({"temperatures": [1.0, float("nan")]}, "temperatures"),
    ({"temperatures": float("inf")}, "temperatures"),
    ({"temperatures": []}, "temperatures"),
    ({"query": np.ones(5)}, "vector"),
    ({"query": None}, "query"),
    ({"mode": "some_to_some"}, "mode"),
    ({"ranks": "dense"}, "ranks"),
    ({"exclude": 99}, "exclude"),
    ({"mode": "many_to_many", "query": np.ones(8)}, "query"),
])
def test_bad_input_names_the_field(rng, kwargs, field):
    args = {"temperatures": 1.0, "query": np.ones(8), **kwargs}
    with pytest.raises(InvalidInput) as err:
        evaluate(rng.normal(size=(20, 8)), args.pop("temperatures"), **args)
    assert err.value.field == field and err.value.reason


def test_limits_and_too_few_points_are_errors(rng):
    with pytest.raises(InvalidInput, match="at least 2 points") as err:
        evaluate(rng.normal(size=(2, 4)), 1.0, exclude=0)
    assert err.value.field == "sample"
    with pytest.raises(LimitExceeded) as err:
        evaluate(np.zeros((MANY_TO_MANY_MAX_ROWS + 1, 1)), 1.0, mode="many_to_many")
    assert err.value.field == "sample"
    with pytest.raises(LimitExceeded):
        evaluate_queries(rng.normal(size=(200, 4)), 1.0, n_queries=MAX_QUERIES + 1)
    with pytest.raises(InvalidInput) as err:
        evaluate_queries(rng.normal(size=(5, 4)), 1.0, n_queries=6)
    assert err.value.field == "queries.sample"
    with pytest.raises(InvalidInput) as err:
        shepard_data(rng.normal(size=(5, 4)), 1.0, "ced", exclude=0)
    assert err.value.field == "metric"
    with pytest.raises(InvalidInput) as err:
        roughness_guide(rng.normal(size=(5, 4)))
    assert err.value.field == "target"


# --- real data (skips when ../shared/data is absent) ----------------------------------------------


def test_imagenet_tri_stands_in_for_ced_from_t_10_but_not_at_t_1(imagenet):
    X = np.asarray(imagenet[0][:3000])
    res = evaluate_queries(X, [1.0, 10.0, 100.0], n_queries=4, seed=5, metrics=["tri", "euc", "cos"])
    at = {r.t: r for r in res.results}
    for t in (10.0, 100.0):
        assert at[t].rho["tri"].min >= 0.99
        assert at[t].recommendation.tri_exact is True
    assert at[1.0].rho["tri"].max < at[10.0].rho["tri"].min
    assert at[1.0].recommendation.tri_exact is False


def test_minilm_euc_keeps_ced_order_far_better_than_cos(minilm):
    # MiniLM's useful temperatures are ~100x smaller than DINOv2's (data README). What our data
    # shows: EUC >> COS at every one of them, as the paper found for DINOv2 (section 9):
    # mean rho over 4 queries, t=0.03: euc ~0.63 / cos ~0.23; t=0.1: 0.90 / 0.36; t=1: 0.999 / 0.41.
    X = np.asarray(minilm[0][:3000])
    res = evaluate_queries(X, [0.03, 0.1, 0.3, 1.0], n_queries=4, seed=2, metrics=["euc", "cos"])
    for r in res.results:
        assert r.recommendation.euc_beats_cos is True
        assert r.rho["euc"].mean > r.rho["cos"].mean + 0.2
    assert res.results[-1].rho["euc"].min > 0.99


def test_a_small_evaluation_stays_on_the_calling_thread(monkeypatch):
    # The fused kernel runs through core.divergences.run_blocks: below _PARALLEL_MIN elements numba runs
    # it on one thread (waking the pool costs more than the work; on 2 cores its threads then spin).
    import numba

    import core.kernels as K
    from core.divergences import _PARALLEL_MIN

    seen: list[int] = []
    kernel = K.all_logit_rows

    def spy(*args):  # type: ignore[no-untyped-def]
        seen.append(numba.get_num_threads())
        return kernel(*args)

    monkeypatch.setattr(K, "all_logit_rows", spy)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 10))
    evaluate(X[1:], [1.0, 10.0], query=X[0])
    assert seen == [1, 1]
    big = rng.normal(size=(_PARALLEL_MIN // 10 + 10, 10))
    evaluate(big[1:], [1.0], query=big[0])
    assert seen[-1] == numba.config.NUMBA_NUM_THREADS
