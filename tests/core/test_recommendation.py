"""Issue 14: the recommendation names a searchable metric, ties go to the cheaper one (equal to the
4th decimal for one query; within 2 standard errors of the paired per-query difference for many),
the best evaluation-only metric is reported beside it; the automatic temperature sweep spans mean
roughness 1e-1 .. 1e-6 (oracle: the roughness formula, eq. 17); the sweep's verdict names the
smallest temperature at which TRI and EUC reach rho >= 0.99."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from core.errors import InvalidInput
from core.evaluation import (
    AUTO_POINTS,
    CHEAPER,
    TIE_RHO,
    TRI_EXACT_RHO,
    _paired_margin,
    _recommend,
    auto_temperatures,
    evaluate,
    evaluate_queries,
    sweep_verdict,
)
from tests.core.test_evaluation import mr


def test_best_is_searchable_even_when_an_evaluation_only_metric_is_higher():
    rho = {"euc": 0.90, "cos": 0.50, "tri": 0.97, "jsd": 0.98, "hellinger": 0.985, "kld": 1.0}
    rec = _recommend(rho, "one_to_many", 1.0)
    assert rec.best == "tri" and rec.rho == 0.97 and rec.tied == ("tri",)
    assert rec.evaluation_only == "hellinger" and rec.evaluation_only_rho == 0.985
    assert "search with tri" in rec.advice and "hellinger" in rec.advice and "not searchable" in rec.advice


@pytest.mark.parametrize(("rho", "best", "tied"), [
    # equal to the 4th decimal (the t = 10 case): the cheaper searchable metric wins
    ({"euc": 0.99785, "cos": 0.5, "tri": 0.99790, "jsd": 0.99790, "hellinger": 0.99790}, "euc", ("euc", "tri")),
    ({"euc": 0.5, "cos": 0.9979, "tri": 0.9979}, "cos", ("cos", "tri")),
    ({"euc": 0.9979, "cos": 0.9979, "tri": 0.9979}, "euc", ("euc", "cos", "tri")),
    # 2e-4 apart is not a tie
    ({"euc": 0.9977, "cos": 0.5, "tri": 0.9979}, "tri", ("tri",)),
    ({"euc": 0.9979, "cos": 0.5, "tri": 0.9977}, "euc", ("euc",)),
])
def test_ties_to_the_fourth_decimal_go_to_the_cheaper_searchable_metric(rho, best, tied):
    rec = _recommend(rho, "one_to_many", 10.0)
    assert (rec.best, rec.tied, rec.tie_margin) == (best, tied, TIE_RHO)
    if len(tied) > 1:
        assert "ties go to the cheaper searchable metric" in rec.advice and CHEAPER in rec.advice


def test_kld_is_evaluation_only_in_many_to_many_but_left_out_for_one_query():
    rho = {"tri": 0.9, "kld": 0.95, "jsd": 0.8}
    assert _recommend(rho, "one_to_many", 1.0).evaluation_only == "jsd"
    assert _recommend(rho, "many_to_many", 1.0).evaluation_only == "kld"
    nothing = _recommend({"jsd": math.nan, "tri": math.nan}, "one_to_many", 1.0)
    assert nothing.best is None and nothing.rho is None and "no searchable metric" in nothing.advice


def test_a_best_below_the_threshold_points_to_ced_itself():
    rec = _recommend({"euc": 0.4, "cos": 0.4, "tri": 0.8}, "one_to_many", 1.0)
    assert rec.best == "tri" and f"no searchable stand-in reaches rho {TRI_EXACT_RHO}" in rec.advice
    assert "search ced at t=1" in rec.advice


def test_many_query_ties_use_two_standard_errors_of_the_paired_difference():
    # per-query rhos written out: tri is ahead of euc by 0.002 on average, with a noisy difference
    diffs = np.array([0.010, -0.006, 0.004, -0.002, 0.008, -0.004])
    tri = 0.99 + np.linspace(0, 0.001, diffs.size)
    per_query = {"euc": list(tri - diffs), "cos": [0.5] * diffs.size, "tri": list(tri)}
    se = diffs.std(ddof=1) / math.sqrt(diffs.size)  # the oracle, by the formula
    margin = _paired_margin(per_query)
    assert margin("tri", "euc") == pytest.approx(2 * se, rel=1e-12)
    means = {m: float(np.mean(v)) for m, v in per_query.items()}
    assert means["tri"] - means["euc"] == pytest.approx(diffs.mean()) and diffs.mean() < 2 * se
    rec = _recommend(means, "one_to_many", 5.0, margin, "2 standard errors")
    assert rec.best == "euc" and rec.tied == ("euc", "tri") and rec.tie_margin == pytest.approx(2 * se)
    # the same mean gap with a steady difference is resolved: tri wins
    steady = {"euc": list(tri - 0.002), "cos": [0.5] * diffs.size, "tri": list(tri)}
    means = {m: float(np.mean(v)) for m, v in steady.items()}
    assert _recommend(means, "one_to_many", 5.0, _paired_margin(steady)).best == "tri"


def test_evaluate_queries_recommends_by_its_paired_standard_errors(rng):
    X = rng.normal(0, 3, size=(120, 16))
    qe = evaluate_queries(X, [0.5, 50.0], n_queries=8, seed=1)
    for r in qe.results:
        singles = [evaluate(X, r.t, exclude=q, metrics=["euc", "cos", "tri"]).results[0] for q in qe.query_rows]
        per = {m: np.array([s.rho[m].value for s in singles]) for m in ("euc", "cos", "tri")}
        means = {m: v.mean() for m, v in per.items()}
        top = max(means, key=lambda m: means[m])
        diff = {m: per[top] - per[m] for m in per}
        margin = {m: max(TIE_RHO, 2 * d.std(ddof=1) / math.sqrt(d.size)) for m, d in diff.items()}
        want = next(m for m in ("euc", "cos", "tri") if means[top] - means[m] <= margin[m])
        assert r.recommendation.best == want
        assert r.recommendation.rho == pytest.approx(means[want], abs=1e-12)


def test_auto_sweep_spans_mean_roughness_from_a_tenth_to_a_millionth(rng):
    X = rng.normal(0, 4, size=(300, 50)) + rng.normal(0, 3, size=(300, 1))
    auto = auto_temperatures(X)
    ts = auto.temperatures
    assert len(ts) == AUTO_POINTS and list(ts) == sorted(ts) and auto.n == 300
    ratios = np.diff(np.log(ts))
    np.testing.assert_allclose(ratios, ratios.mean(), rtol=0.02)  # log-spaced (to the 3 digits shown)
    mean_mr = lambda t: float(np.mean([mr(x, t) for x in X]))
    assert mean_mr(ts[0]) == pytest.approx(1e-1, rel=0.03)
    assert mean_mr(ts[-1]) == pytest.approx(1e-6, rel=0.03)
    assert auto.high.reachable and auto.low.reachable
    assert mean_mr(auto.high.t) == pytest.approx(1e-1, rel=1e-4) and mean_mr(auto.low.t) == pytest.approx(1e-6, rel=1e-4)
    assert all(mean_mr(a) > mean_mr(b) for a, b in itertools.pairwise(ts))


def test_auto_sweep_refuses_rows_whose_roughness_does_not_fall(rng):
    with pytest.raises(InvalidInput) as err:
        auto_temperatures(np.tile(rng.normal(size=6), (5, 1)) * 0)  # uniform softmax at every t: MR = 0
    assert err.value.field == "temperatures" and "give temperatures" in err.value.reason


def test_auto_sweep_on_real_logits_reaches_both_ends(imagenet):
    X = np.ascontiguousarray(imagenet[0][:1500])
    auto = auto_temperatures(X)
    mean_mr = lambda t: float(np.mean([mr(x, t) for x in X]))
    assert mean_mr(auto.temperatures[0]) == pytest.approx(1e-1, rel=0.03)
    assert mean_mr(auto.temperatures[-1]) == pytest.approx(1e-6, rel=0.03)
    assert 0.5 < auto.temperatures[0] < 5 and 20 < auto.temperatures[-1] < 200


def test_sweep_verdict_names_the_smallest_temperature_reaching_099(rng):
    X = rng.normal(0, 3, size=(200, 30)) + rng.normal(0, 2, size=(200, 1))
    ts = [0.3, 1.0, 3.0, 10.0, 30.0, 100.0]
    ev = evaluate(X, ts, exclude=4)
    v = sweep_verdict(ev.results)
    rho = {r.t: r.rho for r in ev.results}
    want_tri = min((t for t in ts if rho[t]["tri"].value >= 0.99), default=None)
    want_euc = min((t for t in ts if rho[t]["euc"].value >= 0.99), default=None)
    assert (v.tri_reaches, v.euc_reaches) == (want_tri, want_euc) and want_tri is not None
    at = next(r for r in ev.results if r.t == v.temperature)
    assert v.metric == at.recommendation.best and at.recommendation.rho >= 0.99
    assert all(r.recommendation.rho < 0.99 for r in ev.results if r.t < v.temperature)
    assert f"tri reaches rho >= 0.99 from t = {want_tri:g}" in v.advice


def test_sweep_verdict_says_when_no_metric_reaches_it(rng):
    X = rng.normal(0, 3, size=(100, 20))
    v = sweep_verdict(evaluate(X, [0.05, 0.1], exclude=0).results)
    assert v.temperature is None and v.metric is None and v.tri_reaches is None
    assert "reaches rho 0.99 at none of them" in v.advice and "no searchable metric keeps CED's order" in v.advice
