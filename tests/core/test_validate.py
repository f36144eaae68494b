"""Input checks (core/validate.py) and the error hierarchy they raise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core import validate
from core.errors import InvalidInput, LimitExceeded, LogitsearchError, NotFound
from core.validate import as_rows, as_vector, check_k, check_temperature, chunk_rows


def test_invalid_input_names_the_field_and_the_reason_and_is_a_value_error():
    err = InvalidInput("temperature", "must be a finite number > 0, got -1.0")
    assert (err.field, err.reason) == ("temperature", "must be a finite number > 0, got -1.0")
    assert str(err) == "temperature: must be a finite number > 0, got -1.0"
    assert isinstance(err, ValueError) and isinstance(err, LogitsearchError)
    assert issubclass(LimitExceeded, InvalidInput)
    assert str(NotFound("collection 'x' not found")) == "collection 'x' not found"


def test_as_rows_keeps_float32_and_float64_without_a_copy(rng):
    for dtype in (np.float32, np.float64):
        X = rng.normal(size=(5, 3)).astype(dtype)
        assert as_rows(X) is X


def test_as_rows_turns_one_vector_into_one_row_and_ints_into_float64():
    A = as_rows([1, 2, 3])
    assert A.shape == (1, 3) and A.dtype == np.float64
    np.testing.assert_array_equal(A, [[1.0, 2.0, 3.0]])


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ([], "empty"),
        ([[]], "empty"),
        (np.zeros((0, 4)), "empty"),
        (np.zeros((2, 2, 2)), "2-D"),
        ("abc", "numbers"),
        ([[1.0, 2.0], [3.0]], "rectangular"),
        ([[1 + 2j, 1.0]], "complex"),
        ([[object(), 1.0]], "numbers"),
    ],
)
def test_as_rows_rejects_what_is_not_a_matrix_of_numbers(bad, words):
    with pytest.raises(InvalidInput) as info:
        as_rows(bad, "vectors")
    assert info.value.field == "vectors" and words in info.value.reason


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_as_rows_names_the_first_row_with_a_non_finite_value(value):
    X = np.zeros((6, 4), dtype=np.float32)
    X[4, 1] = value
    X[5, 0] = value
    with pytest.raises(InvalidInput) as info:
        as_rows(X, "X")
    assert info.value.field == "X" and "row 4" in info.value.reason


def test_non_finite_rows_are_found_in_every_block(monkeypatch):
    monkeypatch.setattr(validate, "CHUNK_BYTES", 8 * 3 * 5)  # 5 rows of d=3 per block
    assert chunk_rows(3) == 5
    for bad in (0, 4, 5, 9, 10, 12):
        X = np.ones((13, 3))
        X[bad, 2] = np.nan
        with pytest.raises(InvalidInput, match=f"row {bad} "):
            as_rows(X, "X")


def test_chunk_rows_fits_the_budget_and_never_returns_zero():
    assert chunk_rows(1000, 8000 * 7) == 7
    assert chunk_rows(10**9, 8) == 1
    assert chunk_rows(0, 80) == 10
    assert chunk_rows(1000) == validate.CHUNK_BYTES // 8000


def test_as_rows_checks_the_width_against_d():
    with pytest.raises(InvalidInput, match="expected dimension 4, got 3") as info:
        as_rows(np.zeros((2, 3)), "P", d=4)
    assert info.value.field == "P"


def test_as_vector_returns_a_fresh_contiguous_float64_copy(rng):
    X = rng.normal(size=(4, 6)).astype(np.float32)
    X.flags.writeable = False
    v = as_vector(X[:, 2], "q")
    assert v.dtype == np.float64 and v.flags.c_contiguous and v.flags.writeable
    np.testing.assert_array_equal(v, X[:, 2].astype(np.float64))
    w = np.arange(3.0)
    assert as_vector(w) is not w
    np.testing.assert_array_equal(as_vector([[1.0, 2.0]]), [1.0, 2.0])


@pytest.mark.parametrize("bad", [np.zeros((2, 3)), np.float64(1.0), [[1.0, np.nan]], [], "x"])
def test_as_vector_rejects_anything_but_one_finite_vector(bad):
    with pytest.raises(InvalidInput) as info:
        as_vector(bad, "q")
    assert info.value.field == "q"


def test_as_vector_checks_its_length():
    with pytest.raises(InvalidInput, match="expected dimension 3"):
        as_vector([1.0, 2.0], "q", d=3)


@pytest.mark.parametrize("t", [0.01, 1, 2.5, np.float32(10.0), "3.5", 1e4])
def test_check_temperature_accepts_the_promised_range(t):
    assert check_temperature(t) == float(t)


@pytest.mark.parametrize(
    ("t", "words"),
    [
        (0, "> 0"),
        (-1.0, "> 0"),
        (math.nan, "finite"),
        (math.inf, "finite"),
        (True, "finite number"),
        ("hot", "a number"),
        (None, "a number"),
        (0.009, "within"),
        (1.0001e4, "within"),
    ],
)
def test_check_temperature_rejects_with_the_field_and_the_reason(t, words):
    with pytest.raises(InvalidInput) as info:
        check_temperature(t, "t")
    assert info.value.field == "t" and words in info.value.reason


def test_check_k_wants_a_whole_number_at_least_one():
    assert check_k(3) == 3 and check_k(np.int64(1)) == 1
    for bad in (0, -2, 1.5, True, "3", None):
        with pytest.raises(InvalidInput) as info:
            check_k(bad)
        assert info.value.field == "k"
