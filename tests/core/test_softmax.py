"""softmax with temperature (eq. 1), its logarithm and LSE: oracles are scipy.special and loops."""

from __future__ import annotations

import math
from fractions import Fraction

import hypothesis.strategies as st
import numpy as np
import pytest
import scipy.special
from hypothesis import given
from hypothesis.extra.numpy import arrays

from core import validate
from core.errors import InvalidInput
from core.softmax import log_softmax, logsumexp_rows, softmax

LOGITS = arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 24)), elements=st.floats(-1e4, 1e4))
TEMPS = st.floats(0.01, 1e4)


def _log_softmax_loop(X: np.ndarray, t: float) -> np.ndarray:
    """Row by row: z_i = (x_i - max x) / t in exact rationals, then z - log(fsum(exp z))."""
    out = np.empty(X.shape)
    for i, row in enumerate(np.asarray(X, dtype=np.float64)):
        m = Fraction(float(row.max()))
        z = [float((Fraction(float(x)) - m) / Fraction(t)) for x in row]
        lse = math.log(math.fsum(math.exp(v) for v in z))
        out[i] = [v - lse for v in z]
    return out


@pytest.mark.parametrize("t", [0.01, 0.3, 1.0, 7.0, 100.0, 1e4])
def test_softmax_and_log_softmax_match_scipy(rng, t):
    X = rng.normal(0, 5, size=(9, 37))
    np.testing.assert_allclose(softmax(X, t), scipy.special.softmax(X / t, axis=1), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(log_softmax(X, t), scipy.special.log_softmax(X / t, axis=1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("t", [0.01, 1e4])
def test_log_softmax_is_finite_and_exact_for_logits_of_1e4_at_both_temperature_ends(t):
    X = np.array([[1e4, -1e4, 0.0, 1e4 - 1e-3], [-1e4, -1e4, -1e4, -1e4], [1e4, 1e4, -1e4, 5e3]])
    L = log_softmax(X, t)
    assert np.isfinite(L).all()
    np.testing.assert_allclose(L, _log_softmax_loop(X, t), rtol=1e-13, atol=1e-13)
    P = softmax(X, t)
    assert np.isfinite(P).all() and (P >= 0).all()
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=0, atol=1e-13)


def test_at_high_temperature_log_probabilities_keep_the_logit_differences():
    # at t = 1e4 all p_i are near 1/d; what ranks neighbours is log p_i - log p_j = (x_i - x_j) / t
    x = np.array([3.0, -2.0, 0.5, 7.25])
    L = log_softmax(x, 1e4)
    np.testing.assert_allclose(L[:, None] - L[None, :], (x[:, None] - x[None, :]) / 1e4, rtol=1e-9, atol=1e-17)


def test_a_one_dimensional_input_gives_a_one_dimensional_output(rng):
    x = rng.normal(size=11)
    assert log_softmax(x, 2.0).shape == (11,) and softmax(x, 2.0).shape == (11,)
    np.testing.assert_allclose(softmax(x, 2.0), scipy.special.softmax(x / 2.0), rtol=1e-13)


def test_a_single_class_has_probability_one():
    np.testing.assert_array_equal(softmax(np.array([[3.0], [-1e4]]), 0.01), [[1.0], [1.0]])
    np.testing.assert_array_equal(log_softmax(np.array([[3.0], [-1e4]]), 0.01), [[0.0], [0.0]])


def test_float32_and_strided_inputs_give_the_float64_contiguous_result(rng):
    base = rng.normal(0, 4, size=(12, 30))
    X32 = base.astype(np.float32)
    want = log_softmax(X32.astype(np.float64), 3.0)
    got = log_softmax(X32, 3.0)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(log_softmax(np.asfortranarray(base), 3.0), log_softmax(base, 3.0))
    np.testing.assert_array_equal(log_softmax(base[::3, ::2], 3.0), log_softmax(base[::3, ::2].copy(), 3.0))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 10])
@pytest.mark.parametrize("d", [1, 2, 5])
def test_blocks_cover_every_row_at_chunk_edges(monkeypatch, rng, n, d):
    monkeypatch.setattr(validate, "CHUNK_BYTES", 8 * 3 * d)  # 3 rows per block
    X = rng.normal(0, 3, size=(n, d))
    np.testing.assert_allclose(log_softmax(X, 0.5), scipy.special.log_softmax(X / 0.5, axis=1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(logsumexp_rows(X, 0.5), _lse_loop(X, 0.5), rtol=1e-13)


def _lse_loop(X: np.ndarray, t: float) -> np.ndarray:
    return np.array([max(r) / t + math.log(math.fsum(math.exp((v - max(r)) / t) for v in r)) for r in X])


@pytest.mark.parametrize("t", [0.01, 1.0, 1e4])
def test_logsumexp_rows_is_the_normaliser_of_eq_1(rng, t):
    X = rng.uniform(-1e4, 1e4, size=(6, 9)).astype(np.float32)
    np.testing.assert_allclose(logsumexp_rows(X, t), _lse_loop(X.astype(np.float64), t), rtol=1e-14)
    # LSE is what turns CED into an inner product: log p = x/t - LSE (which cancels to ulp(x/t))
    Z = X.astype(np.float64) / t
    np.testing.assert_allclose(log_softmax(X, t), Z - logsumexp_rows(X, t)[:, None], rtol=0,
                               atol=1e-15 * (np.abs(Z).max() + 4))


@given(X=LOGITS, t=TEMPS)
def test_log_softmax_is_finite_and_normalised_for_any_logits_and_temperature(X, t):
    L = log_softmax(X, t)
    assert np.isfinite(L).all() and (L <= 1e-12).all()
    np.testing.assert_allclose(np.exp(L).sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(L, scipy.special.log_softmax(X / t, axis=1), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("fn", [softmax, log_softmax, logsumexp_rows])
def test_bad_input_and_bad_temperature_are_domain_errors(fn):
    with pytest.raises(InvalidInput) as info:
        fn([[1.0, np.nan]], 1.0)
    assert info.value.field == "X"
    for t in (0, -1, np.nan, 1e5, "warm"):
        with pytest.raises(InvalidInput) as info:
            fn([[1.0, 2.0]], t)
        assert info.value.field == "t"
    with pytest.raises(InvalidInput):
        fn(np.zeros((0, 3)), 1.0)
