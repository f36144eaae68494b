"""One query against many rows: the paper's functions (Table 1, eqs. 2-6), float64 out.

Probability forms take rows the caller has already computed (as the paper's Table 3 timing
assumes): `P` for probabilities, `logP` for CED. Logit forms (`*_logits`) take raw logits and a
temperature and fuse the softmax in. The query always comes first, as in the paper: `ced(q, logP)`
is CED(q : p) for each row p. Every value means "smaller is nearer".

All-pairs ("many:many") forms return the condensed upper triangle in scipy's `pdist` order; for the
asymmetric CED and KLD the earlier row is the first argument: entry (i, j), i < j, is F(p_i : p_j).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import numpy.typing as npt

from core import _kernels as K
from core.errors import InvalidInput
from core.softmax import log_softmax
from core.validate import as_rows, as_vector, check_temperature, chunk_rows

Floats = npt.NDArray[np.float64]
Rows = npt.NDArray[Any]


def _prep(q: Any, R: Any, qname: str, rname: str) -> tuple[Floats, Rows]:
    A = as_rows(R, rname)
    return as_vector(q, qname, A.shape[1]), A


def _run(kernel: Callable[..., None], q: Floats, A: Rows, *extra: Any) -> Floats:
    out = np.empty(A.shape[0], dtype=np.float64)
    kernel(q, A, *extra, out)
    return out


def _check_probabilities(q: Floats, field: str) -> None:
    if np.any(q < 0) or abs(q.sum() - 1.0) > 1e-6:
        raise InvalidInput(field, "must be a probability vector (non-negative, summing to 1)")


def entropy(q: Any) -> float:
    """Shannon entropy H(q) = -sum q_i log q_i in nats (eq. 9); 0 log 0 counts as 0."""
    v = as_vector(q, "q")
    nz = v[v > 0]
    return float(-(nz * np.log(nz)).sum())


def ced(q: Any, logP: Any) -> Floats:
    """Cross-entropy CED(q : p) = -sum_i q_i log p_i (eq. 2) in nats, for each row of `logP`.

    q: (d,) probabilities; logP: (n, d) log-probabilities (from `log_softmax`, so never log 0).
    Returns float64 (n,). Not zero at q = p (it is H(q) there). Asymmetric.
    """
    v, A = _prep(q, logP, "q", "logP")
    return _run(K.ced_rows, v, A)


def kld(q: Any, logP: Any, logq: Any | None = None) -> Floats:
    """Kullback-Leibler KLD(q : p) = sum_i q_i log(q_i / p_i) (eq. 3) in nats, per row of `logP`.

    Computed as CED(q : p) - H(q) (eq. 9) so that, for a fixed query, it ranks the rows exactly as
    CED does (subtracting one constant is monotone in floating point). Absolute error is about
    1e-16 * log d, which at t >= 1000 is a visible fraction of the tiny KLD values themselves.
    `logq` (log-probabilities of q) gives H(q) without taking log of q; otherwise 0 log 0 = 0.
    """
    v, A = _prep(q, logP, "q", "logP")
    if logq is None:
        hq = entropy(v)
    else:
        lq = as_vector(logq, "logq", A.shape[1])
        hq = float(-(v * lq).sum())
    return _run(K.ced_rows, v, A) - hq


def jsd(q: Any, P: Any) -> Floats:
    """Jensen-Shannon divergence in bits, normalised to [0, 1] (paper eq. 4), per row of `P`.

    JSD = 1 - 1/2 sum h(q_i) + h(p_i) - h(q_i + p_i), h(x) = -x log2 x. Evaluated per coordinate as
    s/(4 ln 2) * [(1+r) log1p(r) + (1-r) log1p(-r)] with s = q+p, r = (q-p)/s: every term is >= 0,
    so nothing cancels across coordinates (eq. 4 as written subtracts numbers near 1 at high t).
    Symmetric; 0 at q = p; 1 for disjoint supports. Equals scipy's `jensenshannon(base=2) ** 2`.
    """
    v, A = _prep(q, P, "q", "P")
    return _run(K.jsd_rows, v, A)


def tri(q: Any, P: Any) -> Floats:
    """Triangular divergence 1/2 sum_i (q_i - p_i)^2 / (q_i + p_i) (paper eq. 5), per row of `P`.

    Symmetric, in [0, 1]; 0/0 terms count as 0. The direct form on purpose: the cheap eq. 23 form
    1 - sum 2 q p / (q + p) subtracts two numbers near 1 and at t >= 100 keeps only a few digits
    (see `tri_cheap` and its test); the direct form costs the same in a fused kernel.
    """
    v, A = _prep(q, P, "q", "P")
    return _run(K.tri_rows, v, A)


def tri_cheap(q: Any, P: Any) -> Floats:
    """TRI by the paper's eq. 23 (1 - sum 2qp/(q+p)): exact algebra, poor numerics at high t."""
    v, A = _prep(q, P, "q", "P")
    return _run(K.tri_cheap_rows, v, A)


def hellinger(q: Any, P: Any) -> Floats:
    """Squared Hellinger distance H^2 = sum_i (sqrt q_i - sqrt p_i)^2, per row of `P`, in [0, 2].

    Symmetric. Per pair, H^2/2 <= TRI <= H^2: the bound that lets an L2 index over sqrt(p) find TRI
    neighbours (indexes/exact.py).
    """
    v, A = _prep(q, P, "q", "P")
    return _run(K.hellinger_rows, v, A)


def euc(q: Any, X: Any) -> Floats:
    """Euclidean divergence sum_i (q_i - x_i)^2 (eq. 6): squared L2 over raw logits."""
    v, A = _prep(q, X, "q", "X")
    return _run(K.euc_rows, v, A)


def cos(q: Any, X: Any) -> Floats:
    """Cosine distance 1 - cos(q, x) over raw logits, in [0, 2].

    The paper's COS is EUC of the unit vectors, 2 (1 - cos): the same ranking, half the value. A zero
    vector has no direction: its distance to anything is 1.
    """
    v, A = _prep(q, X, "q", "X")
    return _run(K.cos_rows, v, A)


# --- from logits plus a temperature ------------------------------------------------------------


def ced_logits(xq: Any, X: Any, t: float) -> Floats:
    """CED(softmax(xq/t) : softmax(x/t)) per row, as LSE(x/t) - q . x/t, without forming p."""
    A = as_rows(X, "X")
    t = check_temperature(t, "t")
    q = np.exp(log_softmax(as_vector(xq, "xq", A.shape[1]), t))
    return _run(K.ced_logit_rows, q, A, 1.0 / t)


def tri_logits(xq: Any, X: Any, t: float) -> Floats:
    """TRI(softmax(xq/t), softmax(x/t)) per row, softmax fused into one pass."""
    A = as_rows(X, "X")
    t = check_temperature(t, "t")
    q = np.exp(log_softmax(as_vector(xq, "xq", A.shape[1]), t))
    return _run(K.tri_logit_rows, q, A, 1.0 / t)


#: column order of `all_logits`
ALL_COLUMNS = ("ced", "kld", "jsd", "tri", "hellinger", "euc", "cos")


def all_logits(xq: Any, X: Any, t: float) -> Floats:
    """Every metric of one query against each row in one pass: (n, 7) float64, `ALL_COLUMNS` order.

    ced/kld/jsd/tri/hellinger over softmax at t, euc/cos over the raw logits. This is what the
    evaluation endpoint uses: one read of the rows for all metrics.
    """
    A = as_rows(X, "X")
    t = check_temperature(t, "t")
    xv = as_vector(xq, "xq", A.shape[1])
    logq = log_softmax(xv, t)
    out = np.empty((A.shape[0], len(ALL_COLUMNS)), dtype=np.float64)
    K.all_logit_rows(xv, np.exp(logq), logq, A, 1.0 / t, out)
    return out


def one_to_many(name: str, xq: Any, X: Any, t: float | None = None) -> Floats:
    """Metric `name` of query logits `xq` against each row of logits `X` (softmax at t if needed).

    Rows are processed in blocks, so temporaries stay within a few tens of MB whatever n is.
    """
    from core.metrics import metric

    m = metric(name)
    A = as_rows(X, "X")
    xv = as_vector(xq, "xq", A.shape[1])
    if m.space == "logits":
        return m.fn(xv, A)
    if name == "ced":
        return ced_logits(xv, A, t if t is not None else 1.0)
    if name == "tri":
        return tri_logits(xv, A, t if t is not None else 1.0)
    tt = check_temperature(1.0 if t is None else t, "t")
    logq = log_softmax(xv, tt)
    q = np.exp(logq)
    out = np.empty(A.shape[0], dtype=np.float64)
    step = chunk_rows(A.shape[1])
    for s in range(0, A.shape[0], step):
        logP = log_softmax(A[s : s + step], tt)
        if name == "kld":
            out[s : s + step] = kld(q, logP, logq)
        else:
            out[s : s + step] = m.fn(q, np.exp(logP, out=logP))
    return out


def pairwise(name: str, X: Any, t: float | None = None) -> Floats:
    """All pairs i < j of the rows of logits `X`, condensed like `scipy.spatial.distance.pdist`.

    Entry for (i, j) is F(row i : row j): for CED/KLD the earlier row is the query. O(n^2 d).
    """
    A = as_rows(X, "X")
    n = A.shape[0]
    if n < 2:
        raise InvalidInput("X", "all-pairs needs at least 2 rows")
    parts = [one_to_many(name, A[i], A[i + 1 :], t) for i in range(n - 1)]
    return np.concatenate(parts)
