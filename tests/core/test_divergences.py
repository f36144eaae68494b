"""The divergences of Table 1 (eqs. 2-6), one query against many rows and all pairs.

Oracles: scipy.special (xlogy, rel_entr, entr), scipy.spatial.distance (jensenshannon, cdist), float64
loops written here, and exact rationals (fractions) / 60-digit decimals where rounding is the point.
"""

from __future__ import annotations

import math
import tracemalloc
from decimal import Decimal, localcontext
from fractions import Fraction

import hypothesis.strategies as st
import numpy as np
import pytest
import scipy.special
from hypothesis import given
from hypothesis.extra.numpy import arrays
from scipy.spatial.distance import cdist, jensenshannon
from scipy.special import entr, rel_entr, xlogy

from core import divergences as D
from core import validate
from core.errors import InvalidInput
from core.metrics import METRICS, metric
from core.softmax import log_softmax, softmax

NAMES = ("ced", "kld", "jsd", "tri", "hellinger", "euc", "cos")
SYMMETRIC = ("jsd", "tri", "hellinger", "euc", "cos")
LOGITS = arrays(np.float64, st.tuples(st.integers(2, 6), st.integers(1, 24)), elements=st.floats(-1e4, 1e4))
TEMPS = st.floats(0.01, 1e4)


# --- oracles ---------------------------------------------------------------------------------------


def _tri_loop(q: np.ndarray, P: np.ndarray) -> np.ndarray:
    """eq. 5 term by term."""
    return np.array([0.5 * sum((a - b) ** 2 / (a + b) for a, b in zip(q, p) if a + b > 0) for p in P])


def _tri_exact(q: np.ndarray, p: np.ndarray) -> float:
    """eq. 5 in exact rational arithmetic on the given float64 values, rounded once at the end."""
    fq, fp = [Fraction(float(v)) for v in q], [Fraction(float(v)) for v in p]
    return float(sum(((a - b) ** 2 / (a + b) for a, b in zip(fq, fp) if a + b > 0), Fraction(0)) / 2)


def _jsd_exact(q: np.ndarray, p: np.ndarray) -> float:
    """eq. 10 / (2 ln 2) with 60-digit decimals: KL(q : m) + KL(p : m), m = (q + p) / 2, in bits / 2."""
    with localcontext() as ctx:
        ctx.prec = 60
        total = Decimal(0)
        for a, b in zip(q, p):
            a, b = Decimal(float(a)), Decimal(float(b))
            m = (a + b) / 2
            total += sum((v * (v / m).ln() for v in (a, b) if v > 0), Decimal(0))
        return float(total / (2 * Decimal(2).ln()))


def _hellinger_loop(q: np.ndarray, P: np.ndarray) -> np.ndarray:
    return np.array([sum((math.sqrt(a) - math.sqrt(b)) ** 2 for a, b in zip(q, p)) for p in P])


def _ced_loop(q: np.ndarray, logP: np.ndarray) -> np.ndarray:
    """eq. 2: -sum q_i log p_i, from log-probabilities."""
    return np.array([-math.fsum(a * lb for a, lb in zip(q, lp)) for lp in logP])


def _oracle(name: str, xq: np.ndarray, X: np.ndarray, t: float) -> np.ndarray:
    """Metric `name` of logits xq against rows X by scipy / loops (not by core's kernels)."""
    X = np.asarray(X, dtype=np.float64)
    if name == "euc":
        return cdist(xq[None, :], X, "sqeuclidean")[0]
    if name == "cos":
        return cdist(xq[None, :], X, "cosine")[0]
    q, P = scipy.special.softmax(xq / t), scipy.special.softmax(X / t, axis=1)
    if name == "ced":
        return _ced_loop(q, scipy.special.log_softmax(X / t, axis=1))
    if name == "kld":  # rel_entr is inf where p underflows to 0 (low t); take the logs then
        logq, logP = scipy.special.log_softmax(xq / t), scipy.special.log_softmax(X / t, axis=1)
        return rel_entr(q, P).sum(axis=1) if (P > 0).all() else (q * (logq - logP)).sum(axis=1)
    if name == "jsd":  # scipy's jensenshannon gives inf when (p + q)/2 underflows: decimals here
        return np.array([_jsd_exact(q, p) for p in P])
    if name == "tri":
        return _tri_loop(q, P)
    return _hellinger_loop(q, P)


# --- each function against its oracle --------------------------------------------------------------


@pytest.fixture
def probs(rng):
    X = rng.normal(0, 4, size=(40, 30))
    return X, softmax(X, 2.0), log_softmax(X, 2.0)


def test_entropy_is_scipys_entr_summed(probs):
    _, P, _ = probs
    for p in P[:5]:
        assert D.entropy(p) == pytest.approx(entr(p).sum(), rel=1e-13)
    assert D.entropy([0.5, 0.5, 0.0]) == pytest.approx(math.log(2), rel=1e-15)


def test_ced_is_minus_xlogy_summed(probs):
    _, P, logP = probs
    q = P[3]
    np.testing.assert_allclose(D.ced(q, logP), -xlogy(q, P).sum(axis=1), rtol=1e-13)
    np.testing.assert_allclose(D.ced(q, logP), _ced_loop(q, logP), rtol=1e-13)
    assert D.ced(q, logP)[3] == pytest.approx(D.entropy(q), rel=1e-13)  # CED(q : q) = H(q), not 0


def test_kld_is_rel_entr_summed_and_ced_minus_entropy(probs):
    _, P, logP = probs
    q = P[7]
    np.testing.assert_allclose(D.kld(q, logP), rel_entr(q, P).sum(axis=1), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(D.kld(q, logP), D.ced(q, logP) - entr(q).sum(), rtol=0, atol=1e-14)
    np.testing.assert_allclose(D.kld(q, logP, logq=logP[7]), D.kld(q, logP), rtol=0, atol=1e-14)


def test_jsd_is_scipys_distance_squared_in_bits(probs):
    _, P, _ = probs
    q = P[0]  # scipy gives sqrt(JS), in nats unless told; eq. 4 is JS in bits
    want = jensenshannon(np.broadcast_to(q, P.shape), P, base=2, axis=1) ** 2
    np.testing.assert_allclose(D.jsd(q, P), want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("t", [1.0, 100.0, 1e4])
def test_jsd_keeps_full_precision_at_high_temperature(rng, t):
    # scipy's own form (rel_entr against the mixture) cancels at high t; ours sums nonnegative terms
    P = softmax(rng.normal(0, 5, size=(6, 12)), t)
    want = np.array([_jsd_exact(P[0], p) for p in P[1:]])
    np.testing.assert_allclose(D.jsd(P[0], P[1:]), want, rtol=1e-14)


def test_tri_is_eq_5_term_by_term(probs):
    _, P, _ = probs
    np.testing.assert_allclose(D.tri(P[2], P), _tri_loop(P[2], P), rtol=1e-13, atol=1e-300)


def test_hellinger_is_the_squared_distance_of_square_roots(probs):
    _, P, _ = probs
    np.testing.assert_allclose(D.hellinger(P[5], P), _hellinger_loop(P[5], P), rtol=1e-12, atol=1e-15)


def test_euc_and_cos_are_scipys_sqeuclidean_and_cosine_on_raw_logits(probs):
    X, _, _ = probs
    np.testing.assert_allclose(D.euc(X[1], X), cdist(X[1:2], X, "sqeuclidean")[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(D.cos(X[1], X), cdist(X[1:2], X, "cosine")[0], rtol=1e-12, atol=1e-14)
    # the paper's COS is EUC of unit vectors = 2 (1 - cos): half of it, same order
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    np.testing.assert_allclose(2 * D.cos(X[1], X), cdist(U[1:2], U, "sqeuclidean")[0], rtol=1e-10, atol=1e-14)


def test_cos_of_a_zero_vector_is_one_and_of_opposite_vectors_two():
    X = np.array([[0.0, 0.0], [1.0, 2.0], [-1.0, -2.0]])
    np.testing.assert_allclose(D.cos([1.0, 2.0], X), [1.0, 0.0, 2.0], atol=1e-15)
    np.testing.assert_allclose(D.cos([0.0, 0.0], X), [1.0, 1.0, 1.0])


@pytest.mark.parametrize("scale", [1e-300, 1e-150, 1.0, 1e150, 1e300])
def test_cos_is_scale_free_down_to_subnormal_squares_and_up_to_overflowing_ones(rng, scale):
    X = rng.normal(size=(6, 5))
    want = cdist(X[:1], X, "cosine")[0]
    np.testing.assert_allclose(D.cos(X[0] * scale, X), want, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(D.cos(X[0], X * scale), want, rtol=1e-12, atol=1e-15)


def test_disjoint_supports_are_at_the_top_of_each_range():
    q, P = np.array([1.0, 0.0, 0.0]), np.array([[0.0, 0.5, 0.5], [0.0, 1.0, 0.0]])
    np.testing.assert_allclose(D.jsd(q, P), [1.0, 1.0], rtol=1e-15)
    np.testing.assert_allclose(D.tri(q, P), [1.0, 1.0], rtol=1e-15)
    np.testing.assert_allclose(D.hellinger(q, P), [2.0, 2.0], rtol=1e-15)


def test_zero_probabilities_count_as_zero_terms():
    q, P = np.array([0.5, 0.5, 0.0]), np.array([[0.5, 0.5, 0.0], [0.25, 0.25, 0.5]])
    np.testing.assert_allclose(D.tri(q, P), _tri_loop(q, P), rtol=1e-15)
    np.testing.assert_allclose(D.jsd(q, P), [_jsd_exact(q, p) for p in P], rtol=1e-15, atol=1e-300)
    np.testing.assert_allclose(D.hellinger(q, P), _hellinger_loop(q, P), rtol=1e-15)
    np.testing.assert_array_equal(D.tri(q, P[:1]), [0.0])


# --- why TRI uses the direct form (eq. 5) and not eq. 23 -------------------------------------------


@pytest.mark.parametrize(("t", "cheap_err"), [(1.0, (0, 1e-13)), (1e4, (1e-11, 1.0))])
def test_tri_uses_eq_5_because_eq_23_loses_digits_at_high_temperature(rng, t, cheap_err):
    # eq. 23 (1 - sum 2qp/(q+p)) is the same algebra, but at high t every p_i ~ 1/d and it subtracts
    # two numbers near 1 to get a TRI of ~1e-8; eq. 5 sums small nonnegative terms and stays exact
    P = softmax(rng.normal(0, 5, size=(9, 16)), t)
    want = np.array([_tri_exact(P[0], p) for p in P[1:]])
    direct = np.abs(D.tri(P[0], P[1:]) - want) / want
    cheap = np.abs(D.tri_cheap(P[0], P[1:]) - want) / want
    assert direct.max() <= 2e-15
    lo, hi = cheap_err
    assert lo <= cheap.max() <= hi


def test_tri_cheap_is_eq_23(probs):
    _, P, _ = probs
    want = [1 - math.fsum(2 * a * b / (a + b) for a, b in zip(P[4], p) if a + b > 0) for p in P]
    np.testing.assert_allclose(D.tri_cheap(P[4], P), want, rtol=1e-10, atol=1e-14)


# --- from logits -----------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0.01, 0.5, 1.0, 10.0, 1e4])
def test_logit_forms_equal_the_probability_forms(rng, t):
    X = rng.normal(0, 6, size=(25, 17))
    q, logP = softmax(X[0], t), log_softmax(X, t)
    np.testing.assert_allclose(D.ced_logits(X[0], X, t), D.ced(q, logP), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(D.tri_logits(X[0], X, t), D.tri(q, np.exp(logP)), rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(D.ced_logits(X[0], X, t), _oracle("ced", X[0], X, t), rtol=1e-12, atol=1e-12)


def test_logit_forms_stay_finite_and_exact_at_logits_of_1e4_and_t_of_001():
    X = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0], [1e4, 1e4 - 1.0, -1e4], [0.0, 0.0, 0.0]])
    t = 0.01
    # exact: q = (1, 0, 0); row 2 has p0 = 1/(1+e^-100), so CED(row0 : row2) = log1p(e^-100) ~ 4e-44
    ced = D.ced_logits(X[0], X, t)
    assert np.isfinite(ced).all()
    np.testing.assert_allclose(ced[[0, 2]], [0.0, math.log1p(math.exp(-100.0))], rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(ced[[1, 3]], [2e6, math.log(3.0)], rtol=1e-14)
    # TRI(row0, row2) = 1/2 (p1 + (q0 - p0)^2 / (q0 + p0)) = e^-100 / 2 to 1e-43 relative
    np.testing.assert_allclose(D.tri_logits(X[0], X, t), [0.0, 1.0, 0.5 * math.exp(-100.0), 0.5], rtol=1e-12)
    A = D.all_logits(X[0], X, t)
    assert np.isfinite(A).all()
    np.testing.assert_allclose(A[:, 0], ced, rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(A[:, 3], D.tri_logits(X[0], X, t), rtol=1e-14)


@pytest.mark.parametrize("t", [0.01, 1.0, 30.0, 1e4])
def test_all_logits_columns_are_each_metric(rng, t):
    X = rng.normal(0, 5, size=(30, 20)).astype(np.float32)
    A = D.all_logits(X[3], X, t)
    assert A.shape == (30, len(D.ALL_COLUMNS)) and D.ALL_COLUMNS == NAMES
    x64 = X.astype(np.float64)
    for k, name in enumerate(D.ALL_COLUMNS):
        want = _oracle(name, x64[3], x64, t)
        np.testing.assert_allclose(A[:, k], want, rtol=1e-9, atol=1e-13, err_msg=name)


@pytest.mark.parametrize("t", [0.05, 1.0, 10.0, 1000.0])
@pytest.mark.parametrize("name", NAMES)
def test_one_to_many_matches_the_oracle_for_every_metric(rng, name, t):
    X = rng.normal(0, 5, size=(20, 11))
    np.testing.assert_allclose(D.one_to_many(name, X[4], X, t), _oracle(name, X[4], X, t), rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("name", NAMES)
def test_pairwise_is_scipys_pdist_order_with_the_earlier_row_first(rng, name):
    X = rng.normal(0, 3, size=(7, 5))
    want = np.concatenate([_oracle(name, X[i], X[i + 1 :], 2.0) for i in range(len(X) - 1)])
    got = D.pairwise(name, X, 2.0)
    assert got.shape == (21,)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)


def test_pairwise_needs_two_rows():
    with pytest.raises(InvalidInput, match="at least 2 rows"):
        D.pairwise("tri", [[1.0, 2.0]], 1.0)


def test_one_row_and_one_dimension_are_answered():
    assert D.one_to_many("tri", [1.0, 2.0], [[3.0, 0.0]], 1.0).shape == (1,)
    X = np.array([[3.0], [-2.0], [0.0]])
    for name in ("ced", "kld", "jsd", "tri", "hellinger"):
        np.testing.assert_allclose(D.one_to_many(name, X[0], X, 1.0), 0.0, atol=1e-15)  # one class: p = 1
    np.testing.assert_allclose(D.one_to_many("euc", X[0], X), [0.0, 25.0, 9.0])
    np.testing.assert_allclose(D.one_to_many("cos", X[0], X), [0.0, 2.0, 1.0])


# --- layouts, dtypes and block edges ---------------------------------------------------------------


def test_float32_strided_fortran_and_read_only_rows_give_the_same_answers(rng):
    X64 = rng.normal(0, 4, size=(23, 13))
    X32 = X64.astype(np.float32)
    q = softmax(X64[0], 3.0)
    ro = X32.copy()
    ro.flags.writeable = False
    variants = [X32, np.asfortranarray(X32), ro, np.repeat(X32, 2, axis=0)[::2], np.repeat(X32, 2, axis=1)[:, ::2]]
    base = {n: D.one_to_many(n, X64[0], X32.astype(np.float64), 3.0) for n in NAMES}
    for V in variants:
        for n in NAMES:
            np.testing.assert_allclose(D.one_to_many(n, X64[0], V, 3.0), base[n], rtol=1e-6, atol=1e-9, err_msg=n)
        P32 = softmax(V, 3.0).astype(np.float32)
        np.testing.assert_allclose(D.tri(q, P32), D.tri(q, P32.astype(np.float64)), rtol=1e-13)
        np.testing.assert_allclose(D.all_logits(X64[0], V, 3.0), D.all_logits(X64[0], X32, 3.0), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6, 7])
@pytest.mark.parametrize("d", [1, 3, 8])
def test_blocks_cover_every_row_at_chunk_edges(monkeypatch, rng, n, d):
    monkeypatch.setattr(validate, "CHUNK_BYTES", 8 * 3 * d)  # 3 rows per block
    X = rng.normal(0, 3, size=(n, d))
    F = np.asfortranarray(X)  # strided: goes through the block copies too
    for name in NAMES:
        want = _oracle(name, X[0], X, 1.5)
        np.testing.assert_allclose(D.one_to_many(name, X[0], X, 1.5), want, rtol=1e-10, atol=1e-13, err_msg=name)
        np.testing.assert_allclose(D.one_to_many(name, X[0], F, 1.5), want, rtol=1e-10, atol=1e-13, err_msg=name)
    np.testing.assert_allclose(D.all_logits(X[0], F, 1.5)[:, 3], _oracle("tri", X[0], X, 1.5), rtol=1e-10, atol=1e-15)


def test_one_query_against_many_rows_allocates_no_rows_sized_temporaries(monkeypatch, rng):
    n, d = 20_000, 200
    X = rng.standard_normal((n, d), dtype=np.float32)
    xq = X[0].astype(np.float64)
    rows_f64 = n * d * 8
    monkeypatch.setattr(validate, "CHUNK_BYTES", 1 << 20)
    for name in NAMES:  # load the compiled kernels before tracing
        D.one_to_many(name, xq, X[:2], 5.0)
    D.all_logits(xq, X[:2], 5.0)
    tracemalloc.start()
    try:
        for call in [lambda name=name: D.one_to_many(name, xq, X, 5.0) for name in NAMES] + [
            lambda: D.all_logits(xq, X, 5.0)
        ]:
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            out = call()
            peak = tracemalloc.get_traced_memory()[1] - before
            # fused paths: ~nothing; jsd/hellinger: softmax of one block and scipy's logsumexp
            # temporaries (~6 blocks). 8 x the default 32 MB block is the 256 MB bound.
            assert peak <= out.nbytes + 8 * validate.CHUNK_BYTES < rows_f64 / 3, (peak, rows_f64)
            del out
    finally:
        tracemalloc.stop()


# --- properties ------------------------------------------------------------------------------------


@given(X=LOGITS, t=TEMPS)
def test_symmetric_metrics_are_symmetric(X, t):
    P = softmax(X, t)
    for name in ("jsd", "tri", "hellinger"):
        F = np.array([getattr(D, name)(p, P) for p in P])
        np.testing.assert_allclose(F, F.T, rtol=1e-12, atol=1e-300, err_msg=name)
    for name in ("euc", "cos"):
        F = np.array([getattr(D, name)(x, X) for x in X])
        np.testing.assert_allclose(F, F.T, rtol=1e-12, atol=1e-12 * (name == "cos"), err_msg=name)


@given(X=LOGITS, t=TEMPS)
def test_divergences_are_nonnegative_bounded_and_zero_at_the_query(X, t):
    P, logP = softmax(X, t), log_softmax(X, t)
    q, logq = P[0], logP[0]
    h = D.entropy(q)
    values = {
        "ced": D.ced(q, logP), "kld": D.kld(q, logP, logq), "jsd": D.jsd(q, P), "tri": D.tri(q, P),
        "hellinger": D.hellinger(q, P), "euc": D.euc(X[0], X), "cos": D.cos(X[0], X),
    }
    tol = {"kld": 1e-15 * (1 + h), "cos": 1e-15}
    for name, v in values.items():
        assert v.dtype == np.float64 and v.shape == (len(X),)
        assert (v >= -tol.get(name, 0.0)).all(), name
        if name == "cos" and not X[0].any():
            assert v[0] == 1.0  # a zero vector has no direction: 1 by convention
        elif name != "ced":
            assert abs(v[0]) <= tol.get(name, 0.0), name
    assert (values["jsd"] <= 1 + 1e-15).all() and (values["tri"] <= 1 + 1e-15).all()
    assert (values["hellinger"] <= 2 + 1e-15).all() and (values["cos"] <= 2 + 1e-15).all()
    assert values["ced"][0] == pytest.approx(h, rel=1e-12, abs=1e-15)  # CED(q : q) = H(q)


@given(X=LOGITS, t=TEMPS)
def test_tri_lies_between_half_and_all_of_squared_hellinger(X, t):
    P = softmax(X, t)
    for p in P:
        d_tri, h2 = D.tri(p, P), D.hellinger(p, P)
        assert np.all(0.5 * h2 <= d_tri * (1 + 1e-12) + 1e-300)
        assert np.all(d_tri <= h2 * (1 + 1e-12) + 1e-300)


@given(X=LOGITS, t=TEMPS)
def test_kld_is_ced_minus_the_entropy_of_the_query(X, t):
    P, logP = softmax(X, t), log_softmax(X, t)
    for i in range(len(X)):
        hq = float(entr(P[i]).sum())
        np.testing.assert_allclose(D.kld(P[i], logP), D.ced(P[i], logP) - hq, rtol=0, atol=1e-15 * (1 + hq))


@given(X=LOGITS, t=TEMPS)
def test_kld_ranks_like_ced_for_a_fixed_query(X, t):
    # subtracting one constant is monotone in floating point: KLD never orders two rows the other
    # way round (it may only merge two CED values that differ in the last bit)
    for ced, kld in [
        (D.one_to_many("ced", X[0], X, t), D.one_to_many("kld", X[0], X, t)),
        tuple(D.all_logits(X[0], X, t)[:, :2].T),
    ]:
        order = np.argsort(ced, kind="stable")
        assert np.all(np.diff(kld[order]) >= 0)
        assert np.array_equal(np.argsort(kld, kind="stable"), order) or np.any(np.diff(kld[order]) == 0)


# --- registry and errors ---------------------------------------------------------------------------


def test_every_metric_is_registered_under_its_own_name_with_its_function():
    assert tuple(METRICS) == NAMES
    for name, m in METRICS.items():
        assert m.name == name and metric(name) is m and m.fn is getattr(D, name)
        assert m.space == ("logits" if name in ("euc", "cos") else "probs")
        assert m.symmetric == (name in SYMMETRIC)


def test_symmetric_flag_matches_behaviour(rng):
    X = rng.normal(0, 3, size=(6, 9))
    for name, m in METRICS.items():
        F = np.array([D.one_to_many(name, x, X, 2.0) for x in X])
        assert np.allclose(F, F.T, rtol=1e-10, atol=1e-14) == m.symmetric, name


@pytest.mark.parametrize("bad", ["EUC", "l2", None, 3])
def test_unknown_metric_lists_the_known_names(bad):
    with pytest.raises(InvalidInput) as info:
        metric(bad)
    assert info.value.field == "metric" and all(n in info.value.reason for n in NAMES)
    with pytest.raises(InvalidInput):
        D.one_to_many(bad, [1.0], [[1.0]], 1.0)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_input_names_the_field(value):
    good = np.array([[0.2, 0.8], [0.5, 0.5]])
    bad = good.copy()
    bad[1, 0] = value
    cases = [
        (lambda: D.tri(good[0], bad), "P"), (lambda: D.tri([value, 0.5], good), "q"),
        (lambda: D.jsd(good[0], bad), "P"), (lambda: D.hellinger(good[0], bad), "P"),
        (lambda: D.ced(good[0], bad), "logP"), (lambda: D.kld(good[0], bad), "logP"),
        (lambda: D.euc(good[0], bad), "X"), (lambda: D.cos(good[0], bad), "X"),
        (lambda: D.ced_logits(good[0], bad, 1.0), "X"), (lambda: D.tri_logits([value, 1.0], good, 1.0), "xq"),
        (lambda: D.all_logits(good[0], bad, 1.0), "X"), (lambda: D.one_to_many("jsd", good[0], bad, 1.0), "X"),
        (lambda: D.pairwise("tri", bad, 1.0), "X"),
    ]
    for call, field in cases:
        with pytest.raises(InvalidInput) as info:
            call()
        assert info.value.field == field and "NaN or infinity" in info.value.reason


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("col", [0, 4, 8])
def test_kernels_flag_a_non_finite_value_wherever_it_is_even_under_a_zero_query_term(value, col):
    # q_col = 0 and p_col = value: a guard such as "q + p > 0" must not skip the term silently
    q = np.full(9, 1 / 8)
    q[col] = 0.0
    P = np.tile(q, (40, 1))
    P[[7, 30], col] = value
    xq = np.zeros(9)
    X = np.zeros((40, 9))
    X[[7, 30], col] = value
    logP = np.full((40, 9), -np.log(9.0))
    logP[[7, 30], col] = value
    calls = [
        (lambda R: D.tri(q, R), P), (lambda R: D.tri_cheap(q, R), P), (lambda R: D.jsd(q, R), P),
        (lambda R: D.hellinger(q, R), P), (lambda R: D.ced(q, R), logP), (lambda R: D.kld(q, R), logP),
        (lambda R: D.euc(xq, R), X), (lambda R: D.cos(xq + 1, R), X),
        (lambda R: D.ced_logits(xq, R, 1.0), X), (lambda R: D.tri_logits(xq, R, 1.0), X),
        (lambda R: D.all_logits(xq, R, 1.0), X),
    ]
    for call, R in calls:
        for rows in (R, np.asfortranarray(R)):
            with pytest.raises(InvalidInput, match="row 7 contains NaN or infinity"):
                call(rows)


def test_finite_rows_that_overflow_give_inf_not_an_error():
    assert D.euc([0.0, 0.0], [[1e200, 0.0], [1.0, 1.0]]).tolist() == [np.inf, 2.0]


def test_shape_and_temperature_errors_are_domain_errors():
    X = np.zeros((3, 4))
    with pytest.raises(InvalidInput, match="expected dimension 4, got 3"):
        D.tri(np.full(3, 1 / 3), X)
    with pytest.raises(InvalidInput, match="one vector"):
        D.euc(X, X)
    with pytest.raises(InvalidInput, match="empty"):
        D.cos([], [])
    with pytest.raises(InvalidInput, match="2-D"):
        D.euc(np.zeros(4), np.zeros((2, 2, 4)))
    for t in (0.0, -1.0, np.inf, 2e4, "x"):
        for call in (D.ced_logits, D.tri_logits, D.all_logits):
            with pytest.raises(InvalidInput) as info:
                call(X[0], X, t)
            assert info.value.field == "t"
