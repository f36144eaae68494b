"""Fused float64 row kernels (numba): one pass over the rows, no N x d temporaries.

Each kernel writes one float64 per row into `out`. Rows may be float32 or float64 (numba compiles
one version per dtype and caches it beside this file). `reassoc`/`contract` let LLVM vectorise the
sums; no flag that drops NaN/inf semantics or uses approximate reciprocals is enabled.

Finiteness is checked in the same pass: each row kernel also sums `x * 0.0` over its elements (0 for
a finite x, NaN for NaN or +-inf; without `nnan`/`ninf` LLVM may not fold it away) into its result,
so a row with a non-finite value comes out NaN even where a guard such as `s > 0` would have
skipped the term. The callers (core/divergences.py) check the (n,) result and only then scan the
rows to name the bad one: input is validated without a second pass over the rows.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit, prange

#: the one fastmath policy of every float64 row kernel (core and indexes/exact.py): reassociation
#: (vectorised sums), fused multiply-add and ignoring the sign of zero change results only by
#: rounding, which the certificates' error terms cover (indexes/exact.py `_gamma`). Never `fast`:
#: `nnan`/`ninf` would let the compiler drop the non-finite checks the kernels rely on. The one
#: exception is indexes/exact.py `exp_inplace`, whose inputs are finite by construction.
FASTMATH = frozenset({"reassoc", "contract", "nsz"})
_LN2 = math.log(2.0)
#: error_model="numpy": a float division by zero gives inf/nan instead of a per-division Python
#: ZeroDivisionError check (every division here is guarded); faster code and ~1/3 less compile time
_OPTS: dict[str, Any] = {
    "parallel": True, "cache": True, "fastmath": set(FASTMATH), "nogil": True, "error_model": "numpy",
}


@njit(**_OPTS)
def tri_rows(q, P, out):  # type: ignore[no-untyped-def]
    n, d = P.shape
    for i in prange(n):
        acc = 0.0
        chk = 0.0
        for j in range(d):
            p = np.float64(P[i, j])
            chk += p * 0.0
            s = q[j] + p
            diff = q[j] - p
            acc += diff * diff / s if s > 0.0 else 0.0
        out[i] = 0.5 * acc + chk


@njit(**_OPTS)
def tri_cheap_rows(q, P, out):  # type: ignore[no-untyped-def]
    # paper eq. 23: 1 - sum 2qp/(q+p); kept only to show (by test) where it loses precision
    n, d = P.shape
    for i in prange(n):
        acc = 0.0
        chk = 0.0
        for j in range(d):
            p = np.float64(P[i, j])
            chk += p * 0.0
            s = q[j] + p
            acc += q[j] * p / s if s > 0.0 else 0.0
        out[i] = 1.0 - 2.0 * acc + chk


@njit(**_OPTS)
def hellinger_rows(q, P, out):  # type: ignore[no-untyped-def]
    # sqrt q - sqrt p as (q - p) / (sqrt q + sqrt p): the plain difference cancels when q ~ p (high
    # t), leaving H^2 a relative error ~1e-16 q / |q - p|; this form keeps it ~1e-16 (one more div)
    n, d = P.shape
    sq = np.sqrt(q)
    for i in prange(n):
        acc = 0.0
        chk = 0.0
        for j in range(d):
            p = np.float64(P[i, j])
            chk += p * 0.0
            den = sq[j] + math.sqrt(p)
            diff = (q[j] - p) / den if den > 0.0 else 0.0
            acc += diff * diff
        out[i] = acc + chk


@njit(**_OPTS)
def jsd_rows(q, P, out):  # type: ignore[no-untyped-def]
    # per coordinate s * f(r), s = q+p, r = (q-p)/s, f(r) = (1+r) log1p(r) + (1-r) log1p(-r) >= 0;
    # below |r| = 0.05 (most terms at high t) by f's series, which is both faster (no log) and
    # exact where the two log1p terms would cancel (see _JSD_SERIES_R)
    n, d = P.shape
    r_small2 = _JSD_SERIES_R * _JSD_SERIES_R
    for i in prange(n):
        acc = 0.0
        chk = 0.0
        for j in range(d):
            p = np.float64(P[i, j])
            chk += p * 0.0
            s = q[j] + p
            if s > 0.0:
                diff = q[j] - p
                r = diff / s
                r2 = r * r
                if r2 < r_small2:
                    acc += diff * r * (1.0 + r2 * (1.0 / 6.0 + r2 * (1.0 / 15.0 + r2 * (
                        1.0 / 28.0 + r2 * (1.0 / 45.0 + r2 * (1.0 / 66.0 + r2 / 91.0))))))
                elif r >= 1.0 or r <= -1.0:
                    acc += s * 2.0 * _LN2
                else:
                    acc += s * ((1.0 + r) * math.log1p(r) + (1.0 - r) * math.log1p(-r))
        out[i] = acc / (4.0 * _LN2) + chk


@njit(**_OPTS)
def euc_rows(q, X, out):  # type: ignore[no-untyped-def]
    n, d = X.shape
    for i in prange(n):
        acc = 0.0
        chk = 0.0
        for j in range(d):
            x = np.float64(X[i, j])
            chk += x * 0.0
            diff = q[j] - x
            acc += diff * diff
        out[i] = acc + chk


#: a row whose squared norm falls outside this range may have under- or overflowed in x*x
_NORM2_SAFE = (1e-280, 1e280)


@njit(**_OPTS)
def cos_rows(q, X, out):  # type: ignore[no-untyped-def]
    # cosine is scale-free: q is scaled to max |q_j| = 1, and the rare row whose squared norm left
    # _NORM2_SAFE (|x| < ~1e-140 or > ~1e140) is summed again scaled by its own max |x_j|
    n, d = X.shape
    qm = 0.0
    for j in range(d):
        qm = max(qm, abs(q[j]))
    qs = np.empty(d)
    qq = 0.0
    for j in range(d):
        qs[j] = q[j] / qm if qm > 0.0 else 0.0
        qq += qs[j] * qs[j]
    nq = math.sqrt(qq)
    lo, hi = _NORM2_SAFE
    for i in prange(n):
        dot = 0.0
        xx = 0.0
        chk = 0.0
        for j in range(d):
            x = np.float64(X[i, j])
            chk += x * 0.0
            dot += qs[j] * x
            xx += x * x
        if chk != 0.0:
            out[i] = chk
            continue
        if not (lo <= xx <= hi):
            xm = 0.0
            for j in range(d):
                xm = max(xm, abs(np.float64(X[i, j])))
            dot = 0.0
            xx = 0.0
            for j in range(d):
                y = np.float64(X[i, j]) / xm if xm > 0.0 else 0.0
                dot += qs[j] * y
                xx += y * y
        if nq > 0.0 and xx > 0.0:
            out[i] = 1.0 - min(1.0, max(-1.0, dot / (nq * math.sqrt(xx))))
        else:
            out[i] = 1.0  # a zero vector has no direction: neither near nor far


@njit(**_OPTS)
def ced_rows(q, logP, out):  # type: ignore[no-untyped-def]
    n, d = logP.shape
    for i in prange(n):
        acc = 0.0
        chk = 0.0
        for j in range(d):
            lp = np.float64(logP[i, j])
            chk += lp * 0.0
            acc += q[j] * lp
        out[i] = chk - acc


@njit(**_OPTS)
def ced_logit_rows(q, X, inv_t, out):  # type: ignore[no-untyped-def]
    # CED(q : softmax(x/t)) = LSE(x/t) - sum q_i x_i / t, per row, without forming p; with
    # z = (x - max x) / t (shift before scaling: x/t may be ~1e6 and would round the differences)
    # and LSE(z) = log1p(sum of exp z but the max's 1), as scipy's logsumexp: CED(q : p) of two
    # confident rows is ~e^-100 at t = 0.01, and log(1 + e^-100) would round it to 0.
    # Both terms are >= 0, so nothing cancels.
    n, d = X.shape
    for i in prange(n):
        m = -np.inf
        jm = 0
        chk = 0.0
        for j in range(d):
            x = np.float64(X[i, j])
            chk += x * 0.0
            if x > m:
                m = x
                jm = j
        if chk != 0.0:
            out[i] = chk
            continue
        rest = 0.0
        dot = 0.0
        for j in range(d):
            z = (np.float64(X[i, j]) - m) * inv_t
            rest += math.exp(z) if j != jm else 0.0
            dot += q[j] * z
        out[i] = math.log1p(rest) - dot


@njit(**{**_OPTS, "parallel": False})
def _exp_row(X, i, inv_t, e):  # type: ignore[no-untyped-def]
    # e[j] = exp((x_j - m) / t) for row i of X, m = max x; returns (rest, m, chk): rest = sum e less
    # the max's own 1 (LSE = m/t + log1p(rest), exact when one class dominates), chk = sum x_j * 0
    m = -np.inf
    jm = 0
    chk = 0.0
    for j in range(X.shape[1]):
        x = np.float64(X[i, j])
        chk += x * 0.0
        if x > m:
            m = x
            jm = j
    rest = 0.0
    for j in range(X.shape[1]):
        v = math.exp((np.float64(X[i, j]) - m) * inv_t)
        e[j] = v
        rest += v if j != jm else 0.0
    return rest, m, chk


@njit(**_OPTS)
def tri_logit_rows(q, X, inv_t, out):  # type: ignore[no-untyped-def]
    # exact TRI(q, softmax(x/t)) per row with the softmax fused in: the scan behind certified TRI k-NN
    # one exp per element, kept in a per-block row buffer (d float64, stays in L1/L2)
    n, d = X.shape
    for b in prange((n + _ROW_BLOCK - 1) // _ROW_BLOCK):
        e = np.empty(d)
        for i in range(b * _ROW_BLOCK, min(n, (b + 1) * _ROW_BLOCK)):
            rest, _, chk = _exp_row(X, i, inv_t, e)
            if chk != 0.0:
                out[i] = chk
                continue
            inv_s = 1.0 / (1.0 + rest)
            acc = 0.0
            for j in range(d):
                p = e[j] * inv_s
                a = q[j] + p
                diff = q[j] - p
                acc += diff * diff / a if a > 0.0 else 0.0
            out[i] = 0.5 * acc


#: JSD's per-coordinate term s * f(r), f(r) = (1+r) log1p(r) + (1-r) log1p(-r), r = (q-p)/(q+p), is
#: summed by its series sum_k r^2k / (k (2k-1)) below |r| = _JSD_SERIES_R (truncation < 1e-18
#: relative) and by one log above it, where the log form's rounding (~1e-15 / r^2) is < 1e-12.
_JSD_SERIES_R = 0.05
_ROW_BLOCK = 64


@njit(**_OPTS)
def all_logit_rows(xq, q, logq, X, inv_t, out):  # type: ignore[no-untyped-def]
    # every metric of one query against each row in one pass (the evaluation endpoint):
    # out[:, 0..6] = ced, kld, jsd, tri, hellinger, euc, cos; with an 8th column, out[:, 7] = MR(p)
    # (eq. 17). Per element: one exp (kept in a row buffer), one division, one sqrt, and a log only
    # for JSD terms with |r| >= 0.05: about 2x the cost of CED alone (benchmarks/evaluate_bench.py).
    n, d = X.shape
    hq = 0.0
    qq = 0.0
    for j in range(d):
        hq -= q[j] * logq[j]
        qq += xq[j] * xq[j]
    sq = np.sqrt(q)
    u = 1.0 / d
    with_mr = out.shape[1] > 7
    r_small2 = _JSD_SERIES_R * _JSD_SERIES_R
    for b in prange((n + _ROW_BLOCK - 1) // _ROW_BLOCK):
        e = np.empty(d)
        for i in range(b * _ROW_BLOCK, min(n, (b + 1) * _ROW_BLOCK)):
            rest, m, chk = _exp_row(X, i, inv_t, e)
            if chk != 0.0:
                for c in range(out.shape[1]):
                    out[i, c] = chk  # a NaN/inf in the row: every column NaN (see module docstring)
                continue
            s = 1.0 + rest
            log_s = math.log1p(rest)  # as in ced_logit_rows
            inv_s = 1.0 / s
            rs = math.sqrt(inv_s)
            ced = 0.0
            tri = 0.0
            jsd = 0.0
            hel = 0.0
            euc = 0.0
            dot = 0.0
            xx = 0.0
            mr = 0.0
            for j in range(d):
                x = np.float64(X[i, j])
                lp = (x - m) * inv_t - log_s  # shift, then scale (see ced_logit_rows)
                p = e[j] * inv_s
                ced -= q[j] * lp
                a = q[j] + p
                diff = q[j] - p
                if a > 0.0:
                    r = diff / a
                    term = diff * r
                    tri += term
                    r2 = r * r
                    if r2 < r_small2:
                        jsd += term * (1.0 + r2 * (1.0 / 6.0 + r2 * (1.0 / 15.0 + r2 * (
                            1.0 / 28.0 + r2 * (1.0 / 45.0 + r2 * (1.0 / 66.0 + r2 / 91.0))))))
                    else:
                        # log((q+p)/2) from log(q+p): (q+p)/2 may underflow for subnormal q+p
                        half = math.log(a) - _LN2
                        jsd += 2.0 * (q[j] * (logq[j] - half) + p * (lp - half))
                # as in hellinger_rows: no cancellation of sqrt q - sqrt p when q ~ p
                den = sq[j] + math.sqrt(e[j]) * rs
                h = diff / den if den > 0.0 else 0.0
                hel += h * h
                ee = xq[j] - x
                euc += ee * ee
                dot += xq[j] * x
                xx += x * x
                w = p - u
                mr += w * w
            out[i, 0] = ced
            out[i, 1] = ced - hq
            out[i, 2] = jsd / (4.0 * _LN2)
            out[i, 3] = 0.5 * tri
            out[i, 4] = hel
            out[i, 5] = euc
            if qq > 0.0 and xx > 0.0:
                out[i, 6] = 1.0 - min(1.0, max(-1.0, dot / math.sqrt(qq * xx)))
            else:
                out[i, 6] = 1.0
            if with_mr:
                out[i, 7] = mr
