"""Index of coincidence and measure of roughness (eqs. 16-17), and the temperature for a target MR."""

from __future__ import annotations

import math
from fractions import Fraction

import hypothesis.strategies as st
import numpy as np
import pytest
import scipy.special
from hypothesis import assume, given, settings
from hypothesis.extra.numpy import arrays

from core import validate
from core.errors import InvalidInput
from core.roughness import (
    RTOL_T,
    index_of_coincidence,
    mean_roughness,
    roughness,
    temperature_for_roughness,
)
from core.validate import T_MAX, T_MIN

LOGITS = arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(2, 16)), elements=st.floats(-50, 50))


def _mr_loop(P: np.ndarray) -> np.ndarray:
    """eq. 17 term by term."""
    return np.array([math.fsum((p - 1 / len(row)) ** 2 for p in row) for row in np.asarray(P, dtype=np.float64)])


def _mean_mr_oracle(X: np.ndarray, t: float) -> float:
    return float(_mr_loop(scipy.special.softmax(X / t, axis=1)).mean())


def test_index_of_coincidence_is_eq_16(rng):
    P = rng.dirichlet(np.ones(12), size=9)
    np.testing.assert_allclose(index_of_coincidence(P), [math.fsum(p * p for p in row) for row in P], rtol=1e-14)
    np.testing.assert_allclose(index_of_coincidence(np.eye(4)), 1.0)
    np.testing.assert_allclose(index_of_coincidence(np.full((2, 8), 1 / 8)), 1 / 8, rtol=1e-15)


def test_roughness_is_eq_17_and_ic_minus_one_over_d(rng):
    P = rng.dirichlet(np.ones(12), size=9).astype(np.float32)
    np.testing.assert_allclose(roughness(P), _mr_loop(P), rtol=1e-13)
    np.testing.assert_allclose(roughness(P), index_of_coincidence(P) - 1 / 12, rtol=1e-6)
    np.testing.assert_allclose(roughness(np.eye(4)), 1 - 1 / 4, rtol=1e-15)
    np.testing.assert_array_equal(roughness(np.full((3, 5), 0.2)), np.zeros(3))


def test_roughness_keeps_its_digits_at_high_temperature(rng):
    # at t = 1e4, MR ~ 1e-9 << 1/d: IC - 1/d would cancel; eq. 17 summed directly does not
    P = scipy.special.softmax(rng.normal(0, 5, size=(4, 10)) / 1e4, axis=1)
    exact = [float(sum((Fraction(float(p)) - Fraction(1, 10)) ** 2 for p in row)) for row in P]
    np.testing.assert_allclose(roughness(P), exact, rtol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_mean_roughness_covers_every_row_at_chunk_edges(monkeypatch, rng, n):
    monkeypatch.setattr(validate, "CHUNK_BYTES", 8 * 3 * 6)  # 3 rows per block
    X = rng.normal(0, 3, size=(n, 6))
    np.testing.assert_allclose(roughness(scipy.special.softmax(X, axis=1)), _mr_loop(scipy.special.softmax(X, axis=1)),
                               rtol=1e-13)
    assert mean_roughness(X, 0.7) == pytest.approx(_mean_mr_oracle(X, 0.7), rel=1e-12)


@given(X=LOGITS, t1=st.floats(T_MIN, T_MAX), t2=st.floats(T_MIN, T_MAX))
def test_roughness_falls_as_temperature_rises(X, t1, t2):
    assume(t1 != t2)
    lo, hi = min(t1, t2), max(t1, t2)
    assert mean_roughness(X, lo) >= mean_roughness(X, hi) * (1 - 1e-12)


@pytest.mark.parametrize("target", [1e-1, 1e-3, 1e-6, 1e-8])
def test_temperature_for_roughness_hits_the_target_within_its_tolerance(rng, target):
    X = rng.normal(0, 5, size=(30, 40))
    got = temperature_for_roughness(X, target)
    assert got.reachable and got.target == target and got.iterations > 0
    # the true t lies within RTOL_T of the answer, so the target sits between MR just either side
    wider = 1 + 2 * RTOL_T
    assert _mean_mr_oracle(X, got.t * wider) <= target <= _mean_mr_oracle(X, got.t / wider)
    assert got.roughness == pytest.approx(_mean_mr_oracle(X, got.t), rel=1e-10)
    assert got.roughness == pytest.approx(target, rel=10 * RTOL_T)


@settings(max_examples=20)  # each example is a ~25-step bisection
@given(X=LOGITS, log_target=st.floats(-12, -0.5))
def test_temperature_for_roughness_brackets_any_reachable_target(X, log_target):
    target = 10.0**log_target
    assume(mean_roughness(X, T_MAX) < target < mean_roughness(X, T_MIN))
    got = temperature_for_roughness(X, target)
    assert got.reachable
    wider = 1 + 2 * RTOL_T
    assert mean_roughness(X, min(T_MAX, got.t * wider)) <= target <= mean_roughness(X, max(T_MIN, got.t / wider))


def test_an_unreachable_target_returns_the_nearest_end(rng):
    X = rng.normal(0, 1, size=(5, 8))
    rough = temperature_for_roughness(X, 0.99)
    assert (rough.t, rough.reachable, rough.iterations) == (T_MIN, False, 0)
    assert rough.roughness == pytest.approx(_mean_mr_oracle(X, T_MIN), rel=1e-12)
    smooth = temperature_for_roughness(X, 1e-30)
    assert (smooth.t, smooth.reachable) == (T_MAX, False)
    narrow = temperature_for_roughness(X, 1e-3, lo=1.0, hi=2.0)
    assert narrow.t in (1.0, 2.0) and not narrow.reachable


def test_flat_rows_cannot_reach_any_roughness():
    got = temperature_for_roughness(np.zeros((3, 4)), 1e-6)
    assert got.roughness == 0.0 and not got.reachable


@pytest.mark.parametrize("target", [0, 1, -0.1, 1.5, math.nan, math.inf, "rough", None])
def test_a_bad_target_is_a_domain_error(target):
    with pytest.raises(InvalidInput) as info:
        temperature_for_roughness(np.ones((2, 3)), target)
    assert info.value.field == "target"


def test_bad_bounds_and_bad_rows_are_domain_errors():
    with pytest.raises(InvalidInput) as info:
        temperature_for_roughness(np.ones((2, 3)), 0.1, lo=0.0)
    assert info.value.field == "lo"
    with pytest.raises(InvalidInput) as info:
        temperature_for_roughness(np.ones((2, 3)), 0.1, hi=1e9)
    assert info.value.field == "hi"
    with pytest.raises(InvalidInput) as info:
        temperature_for_roughness([[1.0, np.nan]], 0.1)
    assert info.value.field == "X"
    with pytest.raises(InvalidInput) as info:
        roughness(np.zeros((0, 3)))
    assert info.value.field == "P"
    with pytest.raises(InvalidInput) as info:
        mean_roughness(np.ones((2, 3)), -1.0)
    assert info.value.field == "t"
