"""Exactness: float64 distances from the float32 table, the certificate, and the exact scan.

Distances are always computed here, in float64 from the stored float32 rows, whatever produced
the candidates; FAISS only proposes. Query forms (`embed.Queries.exact`): raw logits for euc/cos,
softmax(x_q/t) for tri/ced. Kernels read float32 rows and work in float64; the scan kernels take a
block of rows at a time and apply every query to it while it is in cache, and fuse the softmax
of each stored row (computed once per row for all queries).

The certificate (flat mode): FAISS returns the k' smallest of its own float32 proxy values
D_1..D_k'. Every row outside the candidates has proxy >= D_k', so its exact distance is at least
`lower_bound(D_k')`; when that is >= tau, the k-th smallest exact distance among the candidates,
no outside row can enter the top k and the answer is exact ("certified"). The bounds:
- float32 error of a dot product or squared L2 of width w: |err| <= gamma_w * (|a| + |b|)^2 with
  gamma_w = w u / (1 - w u), u = 2^-24 (the classic worst-case bound, any summation order incl.
  BLAS and FMA), plus a few u for rounding the embeddings to float32; doubled for safety.
- tri: c H^2 <= TRI <= H^2 with c = 1/2 (1 + 2 sqrt(mM) / (m + M)) when every probability lies
  in [m, M] (per coordinate (sqrt p + sqrt q)^2 / (p + q) = 1 + 2 sqrt(pq)/(p + q)).
- ced: CED = log d - IP exactly (embed.py), so the bound is the IP error alone.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit, prange

from core.kernels import FASTMATH
from core.parallel import THREADSAFE, region, threading_layer
from indexes.inline import WouldBlock, must_not_wait

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

_OPTS: dict[str, Any] = {"parallel": True, "cache": True, "fastmath": set(FASTMATH), "nogil": True}
_U32 = 2.0**-24
#: rows handled together by one thread of a scan kernel (a block of d = 1000 float64 is 128 kB)
_BLOCK = 16
_CODE = {"euc": 0, "cos": 1, "tri": 2, "ced": 3}


#: exp(x) = 2^k e^r, k = round(x / ln 2), r = x - k ln 2 (two-part ln 2, |r| <= ln2 / 2), e^r by its
#: Taylor series to r^13 (truncation < 2e-16 relative), 2^k built in the exponent bits. Max relative
#: error 2.2e-16 against np.exp on [-708, 0] (tests/indexes). LLVM vectorises it (4 lanes on AVX2):
#: ~1 ns per element against ~6 ns for math.exp, which numba calls one element at a time without
#: SVML. Inputs below -708 give exp(-708) ~ 3e-308 instead of a smaller or subnormal number.
_INV_LN2 = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_SHIFT = 6755399441055744.0  # 1.5 * 2^52: adding it rounds to an integer kept in the low bits
_SHIFT_BITS = 0x4338000000000000
_EXP_MIN = -708.0


# nnan/ninf on top of core.kernels.FASTMATH's contract/nsz (no reassoc: the bit trick's rounding
# must not be reordered): z is finite and clamped at _EXP_MIN by construction, so they only let the
# loop vectorise
@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract", "nsz", "nnan", "ninf"})
def exp_inplace(z, buf):  # type: ignore[no-untyped-def]
    """z <- exp(z) for finite z <= 709; buf: scratch of the same length (float64)."""
    n = z.shape[0]
    for j in range(n):
        x = z[j]
        x = max(_EXP_MIN, x)
        kf = x * _INV_LN2 + _SHIFT
        buf[j] = kf
        k = kf - _SHIFT
        r = (x - k * _LN2_HI) - k * _LN2_LO
        p = 1.0 / 6227020800.0
        p = p * r + 1.0 / 479001600.0
        p = p * r + 1.0 / 39916800.0
        p = p * r + 1.0 / 3628800.0
        p = p * r + 1.0 / 362880.0
        p = p * r + 1.0 / 40320.0
        p = p * r + 1.0 / 5040.0
        p = p * r + 1.0 / 720.0
        p = p * r + 1.0 / 120.0
        p = p * r + 1.0 / 24.0
        p = p * r + 1.0 / 6.0
        p = p * r + 0.5
        p = p * r + 1.0
        z[j] = p * r + 1.0
    bits = buf.view(np.int64)
    for j in range(n):
        bits[j] = (bits[j] - _SHIFT_BITS + 1023) << 52
    for j in range(n):
        z[j] *= buf[j]


@njit(inline="always")
def _softmax_row(x, inv_t, p, buf):  # type: ignore[no-untyped-def]
    # p <- softmax(x * inv_t); returns (max, log of the sum): LSE(x * inv_t) = max + log sum
    d = x.shape[0]
    m = -np.inf
    for j in range(d):
        m = max(m, np.float64(x[j]) * inv_t)
    for j in range(d):
        p[j] = np.float64(x[j]) * inv_t - m
    exp_inplace(p, buf)
    s = 0.0
    for j in range(d):
        s += p[j]
    inv_s = 1.0 / s
    for j in range(d):
        p[j] *= inv_s
    return m, math.log(s)


@njit(inline="always")
def _one(code, q, x, buf, tmp, qq, inv_t):  # type: ignore[no-untyped-def]
    # exact distance of one stored float32 row x from one prepared query q (module docstring)
    d = x.shape[0]
    if code == 0:
        acc = 0.0
        for j in range(d):
            diff = q[j] - np.float64(x[j])
            acc += diff * diff
        return acc
    if code == 1:
        dot = 0.0
        xx = 0.0
        for j in range(d):
            v = np.float64(x[j])
            dot += q[j] * v
            xx += v * v
        if qq > 0.0 and xx > 0.0:
            return 1.0 - min(1.0, max(-1.0, dot / math.sqrt(qq * xx)))
        return 1.0
    m, log_s = _softmax_row(x, inv_t, buf, tmp)
    if code == 2:
        acc = 0.0
        for j in range(d):
            a = q[j] + buf[j]
            diff = q[j] - buf[j]
            acc += diff * diff / a if a > 0.0 else 0.0
        return 0.5 * acc
    # CED = log s - sum q (z - m): with z - m the error does not scale with m (t = 0.01, |x| ~ 1e4
    # gives m ~ 1e6, and a query's probabilities sum to 1 only to ~1e-16 d)
    dot = 0.0
    for j in range(d):
        dot += q[j] * (np.float64(x[j]) * inv_t - m)
    return log_s - dot


def _pairs_impl(code, Q, X, rows, qq, inv_t, out):  # type: ignore[no-untyped-def]
    m, kp = rows.shape
    d = X.shape[1]
    for r in prange(m):
        buf = np.empty(d)
        tmp = np.empty(d)
        for c in range(kp):
            i = rows[r, c]
            out[r, c] = np.inf if i < 0 else _one(code, Q[r], X[i], buf, tmp, qq[r], inv_t)


_pairs = njit(**_OPTS)(_pairs_impl)


@njit(**{**_OPTS, "parallel": False})
def _pairs_serial(code, Q, X, rows, qq, inv_t, out):  # type: ignore[no-untyped-def]
    """_pairs on the calling thread, for a few queries: waking the worker pool costs more than the
    work, and its threads then spin (OpenMP) on a core the event loop needs. A function of its own,
    not njit(parallel=False)(_pairs_impl): numba's on-disk cache is keyed by the Python function, so
    the two would share cache entries and the "serial" one could load the parallel machine code."""
    m, kp = rows.shape
    d = X.shape[1]
    for r in range(m):
        buf = np.empty(d)
        tmp = np.empty(d)
        for c in range(kp):
            i = rows[r, c]
            out[r, c] = np.inf if i < 0 else _one(code, Q[r], X[i], buf, tmp, qq[r], inv_t)


_SERIAL_BELOW = 4


@njit(inline="always")
def _scan_block(code, Q, X, qq, inv_t, out, b, p, tmp):  # type: ignore[no-untyped-def]
    # rows b * _BLOCK ... of X against every query, into out; p, tmp: float64 scratch of length d
    n, d = X.shape
    m = Q.shape[0]
    for i in range(b * _BLOCK, min(n, (b + 1) * _BLOCK)):
        x = X[i]
        if code == 0:
            for r in range(m):
                out[r, i] = _one(0, Q[r], x, p, tmp, 0.0, inv_t)
        elif code == 1:
            xx = 0.0
            for j in range(d):
                xx += np.float64(x[j]) * np.float64(x[j])
            for r in range(m):
                dot = 0.0
                for j in range(d):
                    dot += Q[r, j] * np.float64(x[j])
                if qq[r] > 0.0 and xx > 0.0:
                    out[r, i] = 1.0 - min(1.0, max(-1.0, dot / math.sqrt(qq[r] * xx)))
                else:
                    out[r, i] = 1.0
        elif code == 2:
            _softmax_row(x, inv_t, p, tmp)
            for r in range(m):
                acc = 0.0
                for j in range(d):
                    a = Q[r, j] + p[j]
                    diff = Q[r, j] - p[j]
                    acc += diff * diff / a if a > 0.0 else 0.0
                out[r, i] = 0.5 * acc
        else:
            mx, log_s = _softmax_row(x, inv_t, p, tmp)
            for j in range(d):
                p[j] = np.float64(x[j]) * inv_t - mx
            for r in range(m):
                dot = 0.0
                for j in range(d):
                    dot += Q[r, j] * p[j]
                out[r, i] = log_s - dot


@njit(**_OPTS)
def _scan(code, Q, X, qq, inv_t, out):  # type: ignore[no-untyped-def]
    n, d = X.shape
    for b in prange((n + _BLOCK - 1) // _BLOCK):
        p = np.empty(d)
        tmp = np.empty(d)
        _scan_block(code, Q, X, qq, inv_t, out, b, p, tmp)


@njit(**{**_OPTS, "parallel": False})
def _scan_serial(code, Q, X, qq, inv_t, out):  # type: ignore[no-untyped-def]
    """_scan on the calling thread, for small work (a filter's few rows, issue 15): waking the
    worker pool costs more than the work, and on a busy machine the parallel loop waits for its
    slowest thread's turn on a core (10-20 ms where the work is 1 ms). The same block code inlined."""
    n, d = X.shape
    p = np.empty(d)
    tmp = np.empty(d)
    for b in range((n + _BLOCK - 1) // _BLOCK):
        _scan_block(code, Q, X, qq, inv_t, out, b, p, tmp)


#: a scan step of fewer (queries x rows x d) terms than this runs on the calling thread
SERIAL_SCAN_TERMS = 1 << 21


def _region() -> AbstractContextManager[None]:
    """core.parallel.region(); an inline search (indexes.inline) does not wait for a serialised
    layer's turn: WouldBlock."""
    if must_not_wait() and threading_layer() not in THREADSAFE:
        raise WouldBlock("parallel kernels run one at a time here (numba's workqueue layer)")
    return region()


def _inv_t(t: float | None) -> float:
    return 1.0 if t is None else 1.0 / t


def pair_distances(metric: str, t: float | None, Q: F64, X: F32, rows: I64) -> F64:
    """Exact distance of query r from stored row rows[r, c] (inf where rows[r, c] < 0): (m, k')."""
    out = np.empty(rows.shape, dtype=np.float64)
    if rows.size:
        Qc = np.ascontiguousarray(Q, dtype=np.float64)
        qq = (Qc * Qc).sum(axis=1)
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if Qc.shape[0] < _SERIAL_BELOW:
            _pairs_serial(_CODE[metric], Qc, X, rows, qq, _inv_t(t), out)
        else:
            with _region():
                _pairs(_CODE[metric], Qc, X, rows, qq, _inv_t(t), out)
    return out


#: budget for the (queries x rows) float64 distance block of one scan step
SCAN_BYTES = 64 * 1024 * 1024


#: budget for the rows of X one scan step gathers when it scans a subset of them (`rows`)
GATHER_BYTES = 16 * 1024 * 1024


def scan(metric: str, t: float | None, Q: F64, X: F32, ids: I64, k: int,
         exclude: I64 | None = None, rows: I64 | None = None) -> tuple[list[I64], list[F64]]:
    """The exact k nearest rows of X for each query: one fused float64 pass over the rows.

    Rows go in blocks so the distance block stays within SCAN_BYTES; each block's best k merge
    into a running top k. Ties are broken by the smaller id. exclude[r] (an id, or -1) is left
    out of query r's answer. With `rows` (positions in X), only those rows are scanned, gathered a
    block at a time (GATHER_BYTES), and `ids` are theirs (one per entry of `rows`).
    Returns per query (ids, distances), nearest first, trimmed.
    """
    m, n = Q.shape[0], X.shape[0] if rows is None else rows.size
    Qc = np.ascontiguousarray(Q, dtype=np.float64)
    qq = (Qc * Qc).sum(axis=1)
    step = max(1024, SCAN_BYTES // (8 * max(m, 1)))
    if rows is not None:
        step = min(step, max(1024, GATHER_BYTES // (4 * max(X.shape[1], 1))))
    best_d = np.full((m, 0), np.inf)
    best_i = np.empty((m, 0), dtype=np.int64)
    for s in range(0, n, step):
        Xs = X[s : s + step] if rows is None else X[rows[s : s + step]]
        D = np.empty((m, Xs.shape[0]), dtype=np.float64)
        if m * Xs.shape[0] * Xs.shape[1] < SERIAL_SCAN_TERMS:
            _scan_serial(_CODE[metric], Qc, Xs, qq, _inv_t(t), D)  # calling thread only: no pool to guard
        else:
            with _region():  # one block at a time: a workqueue layer is entered by one thread only
                _scan(_CODE[metric], Qc, Xs, qq, _inv_t(t), D)
        block_ids = np.broadcast_to(ids[s : s + step], D.shape)
        if exclude is not None:
            D[block_ids == exclude[:, None]] = np.inf
        best_d, best_i = _merge(np.hstack([best_d, D]), np.hstack([best_i, block_ids]), k)
    return _trim(best_i, best_d)


#: candidate rows up to this width skip the partition step of _merge (a re-rank of k' ~ k is one sort)
_SORT_WIDTH = 64


def _merge(D: F64, I: I64, k: int) -> tuple[F64, I64]:
    """Per row, the k smallest of D (ties by smaller id), sorted; inf where fewer exist."""
    if D.shape[1] > max(k, _SORT_WIDTH):  # narrower rows are sorted whole: cheaper than partitioning
        part = np.argpartition(D, k - 1, axis=1)
        kth = np.take_along_axis(D, part[:, k - 1 : k], axis=1)
        # keep everything tied with the k-th value so the id tie-break is the same in every path
        keep = D <= kth
        width = int(keep.sum(axis=1).max())
        order = np.argsort(~keep, axis=1, kind="stable")[:, :width]
        D, I = np.take_along_axis(D, order, axis=1), np.take_along_axis(I, order, axis=1)
        D = np.where(np.take_along_axis(keep, order, axis=1), D, np.inf)
    order = np.lexsort((I, D), axis=1)[:, :k]
    return np.take_along_axis(D, order, axis=1), np.take_along_axis(I, order, axis=1)


def topk(D: F64, I: I64, k: int) -> tuple[list[I64], list[F64]]:
    """The k best of each row of candidates (D exact distances, I ids), trimmed of inf."""
    d, i = _merge(D, I, k)
    return _trim(i, d)


def _trim(I: I64, D: F64) -> tuple[list[I64], list[F64]]:
    ok = np.isfinite(D)
    return [I[r][ok[r]] for r in range(I.shape[0])], [D[r][ok[r]] for r in range(D.shape[0])]


def _gamma(w: int) -> float:
    return w * _U32 / (1.0 - w * _U32)


def contraction(pmin: F64 | float, pmax: F64 | float) -> F64:
    """c = 1/2 (1 + 2 sqrt(mM) / (m + M)): TRI >= c H^2 when all probabilities are in [m, M]."""
    m = np.asarray(pmin, dtype=np.float64)
    M = np.asarray(pmax, dtype=np.float64)
    return 0.5 * (1.0 + 2.0 * np.sqrt(m * M) / np.maximum(m + M, np.finfo(np.float64).tiny))


def lower_bound(metric: str, w: int, Dk: F64, qnorm: F64, rnorm: float, c: F64 | None = None) -> F64:
    """A proven lower bound on the exact distance of every row whose FAISS value is >= Dk.

    Dk: FAISS's k'-th value per query (L2 or inner product of width-w float32 embeddings);
    qnorm: each query's embedded norm; rnorm: the largest embedded row norm; c: tri's contraction.
    """
    err = 2.0 * (_gamma(w) + 8.0 * _U32)
    Dk = np.asarray(Dk, dtype=np.float64)
    if metric in ("euc", "tri"):
        h2 = Dk - err * (qnorm + rnorm) ** 2
        return h2 if metric == "euc" else np.asarray(c) * h2 * (1.0 - 1e-12)
    ip = Dk + err * qnorm * rnorm
    if metric == "cos":
        return 1.0 - ip
    # ced: float64 rounding of the exact value itself (LSE and a d-term dot product) on top
    return math.log(w - 1) - ip - 1e-12 * (1.0 + rnorm)
