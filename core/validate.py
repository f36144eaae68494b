"""Input checks shared by every layer: shapes, finiteness, temperatures."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from core.errors import InvalidInput

#: Rows are checked and processed in blocks of about this many bytes of float64.
CHUNK_BYTES = 32 * 1024 * 1024

#: The temperatures we promise to be stable for (issue 2).
T_MIN, T_MAX = 1e-2, 1e4


def chunk_rows(d: int, budget: int | None = None) -> int:
    """Rows per block so that one float64 block of width d stays within `budget` bytes.

    `budget` defaults to `CHUNK_BYTES`, read at call time (tests shrink it to exercise block edges).
    """
    return max(1, (CHUNK_BYTES if budget is None else budget) // (8 * max(d, 1)))


def as_rows(
    X: Any, field: str = "vectors", d: int | None = None, *, finite: bool = True
) -> npt.NDArray[np.floating[Any]]:
    """X as a 2-D float32/float64 array (no copy when it already is one), checked.

    Raises InvalidInput for a non-numeric, empty, ragged or wrongly-shaped input, a width other
    than `d`, or any NaN/inf (checked block by block, so no N x d boolean temporary). With
    finite=False the NaN/inf scan is left to the caller (a kernel that flags such rows itself).
    """
    try:
        A = np.asarray(X)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(field, f"not a rectangular array of numbers ({exc})") from None
    if A.dtype == object or not (np.issubdtype(A.dtype, np.number) or A.dtype == bool):
        raise InvalidInput(field, f"must be numbers, got dtype {A.dtype}")
    if np.issubdtype(A.dtype, np.complexfloating):
        raise InvalidInput(field, "complex numbers are not logits")
    given = A.shape
    if A.ndim == 1:
        A = A[None, :]
    if A.ndim != 2:
        raise InvalidInput(field, f"must be a 2-D array (rows, dim), got {A.ndim} dimensions")
    if A.size == 0:
        raise InvalidInput(field, f"must not be empty, got shape {given}")
    if d is not None and A.shape[1] != d:
        raise InvalidInput(field, f"expected dimension {d}, got {A.shape[1]}")
    if A.dtype not in (np.float32, np.float64):
        A = A.astype(np.float64)
    if finite:
        check_finite(A, field)
    return A


def as_vector(q: Any, field: str = "vector", d: int | None = None) -> npt.NDArray[np.float64]:
    """One vector as a fresh, writable, contiguous float64 (d,) array, checked like `as_rows`.

    Always a copy (d values are cheap): a read-only or strided input would otherwise make numba
    compile another version of every kernel.
    """
    try:
        A = np.asarray(q)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(field, f"not a vector of numbers ({exc})") from None
    if A.ndim != 1 and not (A.ndim == 2 and A.shape[0] == 1):
        raise InvalidInput(field, f"must be one vector, got shape {A.shape}")
    return np.array(as_rows(A, field, d)[0], dtype=np.float64, order="C", copy=True)


def check_finite(A: npt.NDArray[Any], field: str) -> None:
    """Raise InvalidInput naming the first row with NaN or inf."""
    step = chunk_rows(A.shape[1] if A.ndim == 2 else A.size)
    rows = A if A.ndim == 2 else A.reshape(1, -1)
    for start in range(0, rows.shape[0], step):
        block = rows[start : start + step]
        ok = np.isfinite(block).all(axis=1)
        if not ok.all():
            bad = start + int(np.argmin(ok))
            raise InvalidInput(field, f"row {bad} contains NaN or infinity; logits must be finite")


def check_temperature(t: Any, field: str = "temperature") -> float:
    """A temperature as float: finite, > 0, and within [1e-2, 1e4] where stability is promised."""
    try:
        value = float(t)
    except (TypeError, ValueError):
        raise InvalidInput(field, f"must be a number, got {t!r}") from None
    if isinstance(t, bool) or not math.isfinite(value) or value <= 0:
        raise InvalidInput(field, f"must be a finite number > 0, got {t!r}")
    if not (T_MIN <= value <= T_MAX):
        raise InvalidInput(field, f"must be within [{T_MIN:g}, {T_MAX:g}], got {value:g}")
    return value


def check_k(k: Any, field: str = "k") -> int:
    """k as a positive int."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) < 1:
        raise InvalidInput(field, f"must be a whole number >= 1, got {k!r}")
    return int(k)
