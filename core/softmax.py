"""Softmax with temperature over rows (paper eq. 1), and its logarithm."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import logsumexp

from core.validate import as_rows, check_temperature, chunk_rows

Floats = npt.NDArray[np.float64]


def log_softmax(X: Any, t: float = 1.0) -> Floats:
    """log softmax(x / t) of each row, float64, shape as given ((d,) or (n, d)).

    Computed as x/t - logsumexp(x/t) (scipy's logsumexp subtracts the row maximum first), so it is
    finite for logits up to +-1e4 at t = 0.01: the smallest entries are large negative numbers,
    never log 0. Take CED's logarithms from here, never from log(softmax(...)).
    """
    A = as_rows(X, "X")
    t = check_temperature(t, "t")
    out = np.empty(A.shape, dtype=np.float64)
    step = chunk_rows(A.shape[1])
    for s in range(0, A.shape[0], step):
        Z = np.divide(A[s : s + step], t, dtype=np.float64)
        Z -= logsumexp(Z, axis=1, keepdims=True)
        out[s : s + step] = Z
    return out[0] if np.ndim(X) == 1 else out


def softmax(X: Any, t: float = 1.0) -> Floats:
    """softmax(x / t) of each row (eq. 1), float64, rows sum to 1; tiny entries may underflow to 0."""
    out = log_softmax(X, t)
    np.exp(out, out=out)
    return out


def logsumexp_rows(X: Any, t: float = 1.0) -> Floats:
    """LSE(x / t) of each row, float64 (n,): the normaliser that turns CED into an inner product."""
    A = as_rows(X, "X")
    t = check_temperature(t, "t")
    out = np.empty(A.shape[0], dtype=np.float64)
    step = chunk_rows(A.shape[1])
    for s in range(0, A.shape[0], step):
        out[s : s + step] = logsumexp(np.divide(A[s : s + step], t, dtype=np.float64), axis=1)
    return out
