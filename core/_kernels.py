"""Fused float64 row kernels (numba): one pass over the rows, no N x d temporaries.

Each kernel writes one float64 per row into `out`. Rows may be float32 or float64 (numba compiles
one version per dtype and caches it beside this file). `reassoc`/`contract` let LLVM vectorise the
sums; no flag that drops NaN/inf semantics or uses approximate reciprocals is enabled.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

_FM = {"reassoc", "contract", "nsz"}
_LN2 = math.log(2.0)
_OPTS = dict(parallel=True, cache=True, fastmath=_FM, nogil=True)


@njit(**_OPTS)
def tri_rows(q, P, out):  # type: ignore[no-untyped-def]
    n, d = P.shape
    for i in prange(n):
        acc = 0.0
        for j in range(d):
            p = np.float64(P[i, j])
            s = q[j] + p
            diff = q[j] - p
            acc += diff * diff / s if s > 0.0 else 0.0
        out[i] = 0.5 * acc


@njit(**_OPTS)
def tri_cheap_rows(q, P, out):  # type: ignore[no-untyped-def]
    # paper eq. 23: 1 - sum 2qp/(q+p); kept only to show (by test) where it loses precision
    n, d = P.shape
    for i in prange(n):
        acc = 0.0
        for j in range(d):
            p = np.float64(P[i, j])
            s = q[j] + p
            acc += q[j] * p / s if s > 0.0 else 0.0
        out[i] = 1.0 - 2.0 * acc


@njit(**_OPTS)
def hellinger_rows(q, P, out):  # type: ignore[no-untyped-def]
    n, d = P.shape
    sq = np.sqrt(q)
    for i in prange(n):
        acc = 0.0
        for j in range(d):
            diff = sq[j] - math.sqrt(np.float64(P[i, j]))
            acc += diff * diff
        out[i] = acc


@njit(**_OPTS)
def jsd_rows(q, P, out):  # type: ignore[no-untyped-def]
    n, d = P.shape
    for i in prange(n):
        acc = 0.0
        for j in range(d):
            p = np.float64(P[i, j])
            s = q[j] + p
            if s > 0.0:
                r = (q[j] - p) / s
                if r >= 1.0 or r <= -1.0:
                    acc += s * 2.0 * _LN2
                else:
                    acc += s * ((1.0 + r) * math.log1p(r) + (1.0 - r) * math.log1p(-r))
        out[i] = acc / (4.0 * _LN2)


@njit(**_OPTS)
def euc_rows(q, X, out):  # type: ignore[no-untyped-def]
    n, d = X.shape
    for i in prange(n):
        acc = 0.0
        for j in range(d):
            diff = q[j] - np.float64(X[i, j])
            acc += diff * diff
        out[i] = acc


@njit(**_OPTS)
def cos_rows(q, X, out):  # type: ignore[no-untyped-def]
    n, d = X.shape
    qq = 0.0
    for j in range(d):
        qq += q[j] * q[j]
    for i in prange(n):
        dot = 0.0
        xx = 0.0
        for j in range(d):
            x = np.float64(X[i, j])
            dot += q[j] * x
            xx += x * x
        if qq > 0.0 and xx > 0.0:
            c = dot / math.sqrt(qq * xx)
            out[i] = 1.0 - min(1.0, max(-1.0, c))
        else:
            out[i] = 1.0  # a zero vector has no direction: neither near nor far
        

@njit(**_OPTS)
def ced_rows(q, logP, out):  # type: ignore[no-untyped-def]
    n, d = logP.shape
    for i in prange(n):
        acc = 0.0
        for j in range(d):
            acc += q[j] * np.float64(logP[i, j])
        out[i] = -acc


@njit(**_OPTS)
def ced_logit_rows(q, X, inv_t, out):  # type: ignore[no-untyped-def]
    # CED(q : softmax(x/t)) = LSE(x/t) - sum q_i x_i / t, per row, without forming p
    n, d = X.shape
    for i in prange(n):
        m = -np.inf
        for j in range(d):
            z = np.float64(X[i, j]) * inv_t
            m = max(m, z)
        s = 0.0
        dot = 0.0
        for j in range(d):
            z = np.float64(X[i, j]) * inv_t
            s += math.exp(z - m)
            dot += q[j] * (z - m)
        out[i] = math.log(s) - dot


@njit(**_OPTS)
def tri_logit_rows(q, X, inv_t, out):  # type: ignore[no-untyped-def]
    # exact TRI(q, softmax(x/t)) per row with the softmax fused in: the scan behind certified TRI k-NN
    n, d = X.shape
    for i in prange(n):
        m = -np.inf
        for j in range(d):
            m = max(m, np.float64(X[i, j]) * inv_t)
        s = 0.0
        for j in range(d):
            s += math.exp(np.float64(X[i, j]) * inv_t - m)
        inv_s = 1.0 / s
        acc = 0.0
        for j in range(d):
            p = math.exp(np.float64(X[i, j]) * inv_t - m) * inv_s
            a = q[j] + p
            diff = q[j] - p
            acc += diff * diff / a if a > 0.0 else 0.0
        out[i] = 0.5 * acc


@njit(**_OPTS)
def all_logit_rows(xq, q, logq, X, inv_t, out):  # type: ignore[no-untyped-def]
    # every metric of one query against each row in one pass (the evaluation endpoint):
    # out[:, 0..6] = ced, kld, jsd, tri, hellinger, euc, cos
    n, d = X.shape
    hq = 0.0
    qq = 0.0
    for j in range(d):
        hq -= q[j] * logq[j]
        qq += xq[j] * xq[j]
    sq = np.sqrt(q)
    for i in prange(n):
        m = -np.inf
        for j in range(d):
            m = max(m, np.float64(X[i, j]) * inv_t)
        s = 0.0
        for j in range(d):
            s += math.exp(np.float64(X[i, j]) * inv_t - m)
        log_s = math.log(s)
        ced = 0.0
        tri = 0.0
        jsd = 0.0
        hel = 0.0
        euc = 0.0
        dot = 0.0
        xx = 0.0
        for j in range(d):
            x = np.float64(X[i, j])
            lp = x * inv_t - m - log_s
            p = math.exp(lp)
            ced -= q[j] * lp
            a = q[j] + p
            diff = q[j] - p
            if a > 0.0:
                tri += diff * diff / a
                r = diff / a
                if r >= 1.0 or r <= -1.0:
                    jsd += a * 2.0 * _LN2
                else:
                    jsd += a * ((1.0 + r) * math.log1p(r) + (1.0 - r) * math.log1p(-r))
            h = sq[j] - math.sqrt(p)
            hel += h * h
            e = xq[j] - x
            euc += e * e
            dot += xq[j] * x
            xx += x * x
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
