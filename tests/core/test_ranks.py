"""Spearman's rho (eq. 8): average ranks against scipy, and the paper's MATLAB tie-breaking."""

from __future__ import annotations

import math
import warnings

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import assume, given
from scipy.stats import rankdata, spearmanr

from core.errors import InvalidInput
from core.ranks import SharedRanks, average_ranks, paper_ranks, spearman, spearman_paper

TIED = st.integers(2, 40).flatmap(
    lambda n: st.tuples(st.lists(st.integers(0, 3), min_size=n, max_size=n),
                        st.lists(st.integers(0, 3), min_size=n, max_size=n))
)
DISTINCT = st.integers(2, 40).flatmap(
    lambda n: st.tuples(st.lists(st.floats(-1e6, 1e6), min_size=n, max_size=n, unique=True),
                        st.lists(st.floats(-1e6, 1e6), min_size=n, max_size=n, unique=True))
)


def _scipy_rho(a, b) -> float:
    return float(spearmanr(a, b).statistic)


def _matlab_spearman_rho(x, y) -> tuple[float, list[int], list[int]]:
    """The paper's spearman_rho.m, transcribed: sorted = sortrows([x y]); [~, zedhats] =
    sortrows(sorted, 2); rho = 1 - 6 sum (zedhats - (1:n)')^2 / (n^3 - n). MATLAB's sortrows is
    stable, as is Python's sorted. Also returns the ranks it implies, in the input order."""
    n = len(x)
    rows = sorted(range(n), key=lambda i: (x[i], y[i]))  # row k of `sorted` is input rows[k]
    zedhats = sorted(range(n), key=lambda k: y[rows[k]])  # stable: ties in y keep the x order
    d2 = sum((zedhats[k] - k) ** 2 for k in range(n))
    rx, ry = [0] * n, [0] * n
    for k in range(n):
        rx[rows[k]] = k + 1
        ry[rows[zedhats[k]]] = k + 1
    return 1.0 - 6.0 * d2 / (n**3 - n), rx, ry


def test_average_ranks_are_scipys_rankdata(rng):
    x = rng.integers(0, 5, size=300).astype(float)
    np.testing.assert_array_equal(average_ranks(x), rankdata(x, method="average"))
    np.testing.assert_array_equal(average_ranks([3.0, 1.0, 2.0]), [3.0, 1.0, 2.0])


def test_spearman_equals_scipy_on_continuous_and_heavily_tied_data(rng):
    a = rng.normal(size=500)
    b = a + rng.normal(size=500)
    assert spearman(a, b).value == pytest.approx(_scipy_rho(a, b), abs=1e-12)
    ta, tb = np.round(a), np.round(b / 2)  # a handful of distinct values each
    assert spearman(ta, tb).value == pytest.approx(_scipy_rho(ta, tb), abs=1e-12)
    assert spearman(a, -a).value == pytest.approx(-1.0, abs=1e-15)
    two = spearman([1.0, 2.0], [5.0, 3.0])
    assert two.value == pytest.approx(-1.0, abs=1e-15) and two.reason is None


@given(TIED)
def test_spearman_equals_scipy_with_ties(pair):
    a, b = pair
    assume(len(set(a)) > 1 and len(set(b)) > 1)
    got = spearman(a, b)
    assert got.reason is None and got.value == pytest.approx(_scipy_rho(a, b), abs=1e-12)


@pytest.mark.parametrize(("a", "b"), [([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]), ([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])])
def test_constant_input_gives_nan_with_a_reason_and_no_warning(a, b):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rho = spearman(a, b)
        shared = SharedRanks(a).rho(b)
    assert math.isnan(rho.value) and "constant" in rho.reason
    assert math.isnan(shared.value) and "constant" in shared.reason


@pytest.mark.parametrize(
    ("a", "b", "field"),
    [
        ([1.0, 2.0], [1.0, 2.0, 3.0], "b"),
        ([1.0, np.nan], [1.0, 2.0], "a"),
        ([1.0, 2.0], [np.inf, 2.0], "b"),
        ([1.0], [1.0], "a"),
        ([[1.0, 2.0]], [1.0, 2.0], "a"),
        (["x", "y"], [1.0, 2.0], "a"),
    ],
)
def test_bad_samples_are_domain_errors_naming_the_argument(a, b, field):
    with pytest.raises(InvalidInput) as info:
        spearman(a, b)
    assert info.value.field == field


@given(TIED)
def test_paper_ranks_are_the_matlab_codes(pair):
    x, y = pair
    want_rho, want_rx, want_ry = _matlab_spearman_rho(x, y)
    rx, ry = paper_ranks(x, y)
    np.testing.assert_array_equal(rx, want_rx)
    np.testing.assert_array_equal(ry, want_ry)
    assert spearman_paper(x, y).value == pytest.approx(want_rho, abs=1e-12)


def test_paper_ranks_break_ties_by_the_other_variable():
    rx, ry = paper_ranks([1, 1, 0, 1], [3, 1, 2, 1])
    np.testing.assert_array_equal(rx, [4, 2, 1, 3])  # ties in x: by y, then by position
    np.testing.assert_array_equal(ry, [4, 1, 3, 2])  # ties in y (equal x too): by position
    _, ry = paper_ranks([2, 1, 0, 1], [1, 3, 2, 1])
    np.testing.assert_array_equal(ry, [2, 4, 3, 1])  # ties in y: by x


@given(DISTINCT)
def test_paper_rho_is_scipys_when_nothing_is_tied(pair):
    x, y = pair
    assert spearman_paper(x, y).value == pytest.approx(_scipy_rho(x, y), abs=1e-12)


@given(TIED)
def test_paper_rho_is_at_least_scipys_when_there_are_ties(pair):
    # breaking every tie the way the other variable agrees with can only raise the correlation
    x, y = pair
    assume(len(set(x)) > 1 and len(set(y)) > 1)
    assert spearman_paper(x, y).value >= _scipy_rho(x, y) - 1e-12


def test_shared_ranks_give_what_spearman_gives_for_each_metric(rng):
    ref = np.round(rng.normal(size=200), 1)
    shared, paper = SharedRanks(ref), SharedRanks(ref, mode="paper")
    for _ in range(4):
        other = np.round(ref + rng.normal(size=200), 1)
        assert shared.rho(other).value == pytest.approx(_scipy_rho(ref, other), abs=1e-12)
        assert paper.rho(other) == spearman_paper(ref, other)


def test_shared_ranks_reject_a_bad_mode_and_a_wrong_length():
    with pytest.raises(InvalidInput, match="average, paper") as info:
        SharedRanks([1.0, 2.0], mode="dense")  # type: ignore[arg-type]
    assert info.value.field == "ranks"
    with pytest.raises(InvalidInput, match="length 2") as info:
        SharedRanks([1.0, 2.0]).rho([1.0, 2.0, 3.0])
    assert info.value.field == "other"
