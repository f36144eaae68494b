"""Each metric as vectors FAISS searches natively, computed in float64 and cast to float32 last.

- euc: the raw logits; L2 gives eq. 6 directly.
- cos: unit vectors; inner product = cosine, so 1 - IP is the distance (a zero row stays zero:
  cosine 0, distance 1, as `core.divergences.cos` defines it).
- tri at t: e = sqrt(softmax(x/t)) - 1/sqrt(d), "softmax-then-sqrt", centred. L2 is translation
  invariant, so |e_q - e_p|^2 is the squared Hellinger distance H^2; without the centring every
  vector is ~1/sqrt(d) at t >= 100 and float32 keeps almost nothing of the differences.
- ced at t: rows [z, LSE(z) - log d] with z = (x - mean(x))/t, queries [q, -1] with
  q = softmax(x_q/t). Then q.z - LSE(z) + log d = log d - CED(q : p), so CED k-NN is a
  maximum-inner-product search (softmax is shift invariant, so centring and the log d offset only
  keep the float32 values small).

Every function works block by block (`core.validate.chunk_rows`), so no N x d float64 temporary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import logsumexp

from core.softmax import log_softmax

from core.validate import chunk_rows

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

#: FAISS metric per index metric (faiss.METRIC_L2 = 1, faiss.METRIC_INNER_PRODUCT = 0)
L2, IP = "l2", "ip"
SPACE = {"euc": L2, "cos": IP, "tri": L2, "ced": IP}


@dataclass(frozen=True)
class Stats:
    """What the certificate needs to know about a set of embedded rows.

    norm: the largest L2 norm of an embedded row; pmin, pmax: the smallest and largest
    probability of any coordinate (tri only; 1.0 and 0.0, i.e. "nothing seen", otherwise).
    """

    norm: float = 0.0
    pmin: float = 1.0
    pmax: float = 0.0

    def merge(self, other: Stats) -> Stats:
        return Stats(max(self.norm, other.norm), min(self.pmin, other.pmin), max(self.pmax, other.pmax))


def width(metric: str, d: int) -> int:
    """Dimension of the embedded vectors."""
    return d + 1 if metric == "ced" else d


#: rows per block of the float64 embedding work (~8 MB of float64 per block)
def _step(d: int) -> int:
    return chunk_rows(d, 8 * 1024 * 1024)


def rows(metric: str, t: float | None, X: Any) -> tuple[F32, Stats]:
    """Embedded stored rows (n, width) float32 and their `Stats`; X is (n, d) raw logits."""
    n, d = X.shape
    out = np.empty((n, width(metric, d)), dtype=np.float32)
    stats = Stats()
    step = _step(d)
    for s in range(0, n, step):
        E, st = _rows_block(metric, t, X[s : s + step])
        out[s : s + step] = E
        stats = stats.merge(st)
    return out, stats


def _rows_block(metric: str, t: float | None, B: Any) -> tuple[F32, Stats]:
    d = B.shape[1]
    if metric == "euc":
        E = np.asarray(B, dtype=np.float32)
        return E, Stats(norm=float(np.sqrt((E.astype(np.float64) ** 2).sum(axis=1).max())))
    if metric == "cos":
        E64 = _unit(B)
        return E64.astype(np.float32), Stats(norm=1.0)
    assert t is not None  # IndexSpec guarantees a temperature for tri and ced
    if metric == "tri":
        logP = log_softmax(B, t)
        pmin, pmax = float(np.exp(logP.min())), float(np.exp(logP.max()))
        E64 = np.exp(0.5 * logP) - 1.0 / math.sqrt(d)
        norm = float(np.sqrt((E64**2).sum(axis=1).max()))
        return E64.astype(np.float32), Stats(norm=norm, pmin=pmin, pmax=pmax)
    Z = np.asarray(B, dtype=np.float64)
    Z = (Z - Z.mean(axis=1, keepdims=True)) / t
    E64 = np.empty((Z.shape[0], d + 1))
    E64[:, :d] = Z
    E64[:, d] = logsumexp(Z, axis=1) - math.log(d)
    return E64.astype(np.float32), Stats(norm=float(np.sqrt((E64**2).sum(axis=1).max())))


def _unit(B: Any) -> F64:
    E = np.asarray(B, dtype=np.float64)
    norms = np.sqrt((E * E).sum(axis=1, keepdims=True))
    out: F64 = np.divide(E, norms, out=np.zeros_like(E), where=norms > 0)
    return out


@dataclass(frozen=True)
class Queries:
    """Queries in the forms the search needs.

    vectors: the embedded queries (m, width) float32 for FAISS; exact: (m, d) float64 that the
    exact kernels take (raw logits for euc/cos, softmax(x/t) for tri/ced); norm: each embedded
    query's L2 norm; pmin/pmax: each query's smallest and largest probability (tri).
    """

    vectors: F32
    exact: F64
    norm: F64
    pmin: F64
    pmax: F64


def queries(metric: str, t: float | None, Q: F64) -> Queries:
    """Embed float64 query logits (m, d) for `metric` at `t`."""
    m, d = Q.shape
    ones = np.ones(m)
    if metric in ("euc", "cos"):
        E = Q if metric == "euc" else _unit(Q)
        return Queries(E.astype(np.float32), Q, np.sqrt((E * E).sum(axis=1)), ones, 0 * ones)
    assert t is not None
    logP = log_softmax(Q, t)
    P = np.exp(logP)
    if metric == "tri":
        E = np.exp(0.5 * logP) - 1.0 / math.sqrt(d)
        return Queries(E.astype(np.float32), P, np.sqrt((E * E).sum(axis=1)), P.min(axis=1), P.max(axis=1))
    E = np.empty((m, d + 1))
    E[:, :d] = P
    E[:, d] = -1.0
    return Queries(E.astype(np.float32), P, np.sqrt((E * E).sum(axis=1)), ones, 0 * ones)


def lift(E: F32, radius: float | None) -> F32:
    """Maximum inner product as L2: rows [y, sqrt(R^2 - |y|^2)] (radius R), queries [u, 0] (None).

    A row longer than R gets 0 in the new coordinate (the caller rebuilds with a larger R).
    """
    E64 = np.asarray(E, dtype=np.float64)
    out = np.zeros((E64.shape[0], E64.shape[1] + 1), dtype=np.float32)
    out[:, :-1] = E
    if radius is not None:
        out[:, -1] = np.sqrt(np.maximum(radius * radius - (E64 * E64).sum(axis=1), 0.0))
    return out
