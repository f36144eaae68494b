"""One query against many rows: the paper's functions (Table 1, eqs. 2-6), float64 out.

Probability forms take rows the caller has already computed (as the paper's Table 3 timing
assumes): `P` for probabilities, `logP` for CED. Logit forms (`*_logits`) take raw logits and a
temperature and fuse the softmax in. The query always comes first, as in the paper: `ced(q, logP)`
is CED(q : p) for each row p. Every value means "smaller is nearer".

All-pairs ("many:many") forms return the condensed upper triangle in scipy's `pdist` order; for the
asymmetric CED and KLD the earlier row is the first argument: entry (i, j), i < j, is F(p_i : p_j).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from core import kernels as K
from core.errors import InvalidInput
from core.parallel import region
from core.softmax import log_softmax, softmax
from core.validate import as_rows, as_vector, check_finite, check_temperature, chunk_rows

Floats = npt.NDArray[np.float64]
Rows = npt.NDArray[Any]


def _prep(q: Any, R: Any, qname: str, rname: str) -> tuple[Floats, Rows]:
    A = as_rows(R, rname, finite=False)  # the kernel flags non-finite rows (see _run)
    return as_vector(q, qname, A.shape[1]), A


def _run(kernel: Callable[..., None], q: Floats, A: Rows, *extra: Any, field: str) -> Floats:
    """kernel(q, A, *extra, out) -> out; InvalidInput naming `field` and the row if A has NaN/inf.

    The kernels fold a finiteness check into their one pass (core/kernels.py): a NaN or inf in a
    row makes its result non-finite, and only then are the rows scanned to name the first bad one.
    """
    out = np.empty(A.shape[0], dtype=np.float64)
    run_blocks(kernel, (q,), A, extra, out)
    if not np.isfinite(out).all():
        check_finite(A, field)  # raises; finite rows can still overflow (euc of 1e200s): inf stays
    return out


def run_blocks(kernel: Callable[..., None], lead: tuple[Any, ...], A: Rows, extra: tuple[Any, ...],
            out: npt.NDArray[np.float64]) -> None:
    """kernel(*lead, rows, *extra, out) over A; strided or read-only rows go in contiguous blocks.

    Numba compiles one version per array type, so a strided (e.g. Fortran-order, sliced) or
    read-only (memory-mapped) input would cost a compile of its own; a block copy of
    `chunk_rows(d)` rows costs far less and keeps temporaries bounded.
    """
    with region():  # the threading layer is chosen before the first launch (core/parallel.py)
        _blocks_in_region(kernel, lead, A, extra, out)


def _blocks_in_region(kernel: Callable[..., None], lead: tuple[Any, ...], A: Rows, extra: tuple[Any, ...],
                      out: npt.NDArray[np.float64]) -> None:
    threads = numba.get_num_threads()
    if A.size < _PARALLEL_MIN:
        # waking the thread pool costs 0.05-5 ms on a busy machine: more than a small scan
        numba.set_num_threads(1)
    try:
        if A.flags.c_contiguous and A.flags.writeable:
            kernel(*lead, A, *extra, out)
            return
        step = chunk_rows(A.shape[1])
        for s in range(0, A.shape[0], step):
            kernel(*lead, np.array(A[s : s + step], order="C"), *extra, out[s : s + step])
    finally:
        numba.set_num_threads(threads)


#: below this many row elements the kernels run on the calling thread only
_PARALLEL_MIN = 1 << 17


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
    return _run(K.ced_rows, v, A, field="logP")


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
    return _run(K.ced_rows, v, A, field="logP") - hq


def jsd(q: Any, P: Any) -> Floats:
    """Jensen-Shannon divergence in bits, normalised to [0, 1] (paper eq. 4), per row of `P`.

    JSD = 1 - 1/2 sum h(q_i) + h(p_i) - h(q_i + p_i), h(x) = -x log2 x. Evaluated per coordinate as
    s/(4 ln 2) * [(1+r) log1p(r) + (1-r) log1p(-r)] with s = q+p, r = (q-p)/s: every term is >= 0,
    so nothing cancels across coordinates (eq. 4 as written subtracts numbers near 1 at high t).
    Symmetric; 0 at q = p; 1 for disjoint supports. Equals scipy's `jensenshannon(base=2) ** 2`.
    """
    v, A = _prep(q, P, "q", "P")
    return _run(K.jsd_rows, v, A, field="P")


def tri(q: Any, P: Any) -> Floats:
    """Triangular divergence 1/2 sum_i (q_i - p_i)^2 / (q_i + p_i) (paper eq. 5), per row of `P`.

    Symmetric, in [0, 1]; 0/0 terms count as 0. The direct form on purpose: the cheap eq. 23 form
    1 - sum 2 q p / (q + p) subtracts two numbers near 1 and at t >= 100 keeps only a few digits
    (see `tri_cheap` and its test); the direct form costs the same in a fused kernel.
    """
    v, A = _prep(q, P, "q", "P")
    return _run(K.tri_rows, v, A, field="P")


def tri_cheap(q: Any, P: Any) -> Floats:
    """TRI by the paper's eq. 23 (1 - sum 2qp/(q+p)): exact algebra, poor numerics at high t."""
    v, A = _prep(q, P, "q", "P")
    return _run(K.tri_cheap_rows, v, A, field="P")


def hellinger(q: Any, P: Any) -> Floats:
    """Squared Hellinger distance H^2 = sum_i (sqrt q_i - sqrt p_i)^2, per row of `P`, in [0, 2].

    Symmetric. Per pair, H^2/2 <= TRI <= H^2: the bound that lets an L2 index over sqrt(p) find TRI
    neighbours (indexes/exact.py).
    """
    v, A = _prep(q, P, "q", "P")
    return _run(K.hellinger_rows, v, A, field="P")


def euc(q: Any, X: Any) -> Floats:
    """Euclidean divergence sum_i (q_i - x_i)^2 (eq. 6): squared L2 over raw logits."""
    v, A = _prep(q, X, "q", "X")
    return _run(K.euc_rows, v, A, field="X")


def cos(q: Any, X: Any) -> Floats:
    """Cosine distance 1 - cos(q, x) over raw logits, in [0, 2].

    The paper's COS is EUC of the unit vectors, 2 (1 - cos): the same ranking, half the value. A zero
    vector has no direction: its distance to anything is 1.
    """
    v, A = _prep(q, X, "q", "X")
    return _run(K.cos_rows, v, A, field="X")


# --- from logits plus a temperature ------------------------------------------------------------


def ced_logits(xq: Any, X: Any, t: float) -> Floats:
    """CED(softmax(xq/t) : softmax(x/t)) per row, as LSE(x/t) - q . x/t, without forming p."""
    A = as_rows(X, "X", finite=False)
    t = check_temperature(t, "t")
    q = np.exp(log_softmax(as_vector(xq, "xq", A.shape[1]), t))
    return _run(K.ced_logit_rows, q, A, 1.0 / t, field="X")


def tri_logits(xq: Any, X: Any, t: float) -> Floats:
    """TRI(softmax(xq/t), softmax(x/t)) per row, softmax fused into one pass."""
    A = as_rows(X, "X", finite=False)
    t = check_temperature(t, "t")
    q = np.exp(log_softmax(as_vector(xq, "xq", A.shape[1]), t))
    return _run(K.tri_logit_rows, q, A, 1.0 / t, field="X")


#: column order of `all_logits`
ALL_COLUMNS = ("ced", "kld", "jsd", "tri", "hellinger", "euc", "cos")


def all_logits(xq: Any, X: Any, t: float) -> Floats:
    """Every metric of one query against each row in one pass: (n, 7) float64, `ALL_COLUMNS` order.

    ced/kld/jsd/tri/hellinger over softmax at t, euc/cos over the raw logits. This is what the
    evaluation endpoint uses: one read of the rows for all metrics.
    """
    A = as_rows(X, "X", finite=False)
    t = check_temperature(t, "t")
    xv = as_vector(xq, "xq", A.shape[1])
    logq = log_softmax(xv, t)
    out = np.empty((A.shape[0], len(ALL_COLUMNS)), dtype=np.float64)
    run_blocks(K.all_logit_rows, (xv, np.exp(logq), logq), A, (1.0 / t,), out)
    if not np.isfinite(out[:, 0]).all():
        check_finite(A, "X")  # the kernel sets a row with NaN/inf to NaN: name it
    return out


def one_to_many(name: str, xq: Any, X: Any, t: float | None = None) -> Floats:
    """Metric `name` of query logits `xq` against each row of logits `X` (softmax at t if needed).

    `t` is ignored by euc/cos and defaults to 1 for the others. ced, kld and tri run fused kernels
    (no temporaries beyond the (n,) result); jsd and hellinger take softmax block by block, so
    temporaries stay within a few `CHUNK_BYTES` whatever n is.
    """
    from core.metrics import metric

    m = metric(name)
    A = as_rows(X, "X", finite=False)
    xv = as_vector(xq, "xq", A.shape[1])
    if m.space == "logits":
        return _run(_LOGIT_KERNELS[name], xv, A, field="X")
    tt = check_temperature(1.0 if t is None else t, "t")
    logq = log_softmax(xv, tt)
    q = np.exp(logq)
    if name in ("ced", "kld"):
        out = _run(K.ced_logit_rows, q, A, 1.0 / tt, field="X")
        if name == "kld":
            # the same fused CED pass minus one constant: ranks exactly as one_to_many("ced") does
            out -= float(-(q * logq).sum())
        return out
    if name == "tri":
        return _run(K.tri_logit_rows, q, A, 1.0 / tt, field="X")
    check_finite(A, "X")  # before the blocks, so the row named is the row of X
    kernel = _PROB_KERNELS[name]
    out = np.empty(A.shape[0], dtype=np.float64)
    step = chunk_rows(A.shape[1])
    for s in range(0, A.shape[0], step):
        run_blocks(kernel, (q,), softmax(A[s : s + step], tt), (), out[s : s + step])
    return out


def pairwise(name: str, X: Any, t: float | None = None) -> Floats:
    """All pairs i < j of the rows of logits `X`, condensed like `scipy.spatial.distance.pdist`.

    Entry for (i, j) is F(row i : row j): for CED/KLD the earlier row is the query. `t` as in
    `one_to_many`. Softmax is taken once per row; O(n^2 d) time, O(n d + n^2) memory.
    """
    from core.metrics import metric

    m = metric(name)
    A = as_rows(X, "X")
    n = A.shape[0]
    if n < 2:
        raise InvalidInput("X", "all-pairs needs at least 2 rows")
    out = np.empty(n * (n - 1) // 2, dtype=np.float64)
    starts = np.concatenate(([0], np.cumsum(np.arange(n - 1, 0, -1))))
    if m.space == "logits":
        R = np.array(A, dtype=np.float64, order="C")
        for i in range(n - 1):
            run_blocks(_LOGIT_KERNELS[name], (R[i].copy(),), R[i + 1 :], (), out[starts[i] : starts[i + 1]])
        return out
    logP = log_softmax(A, check_temperature(1.0 if t is None else t, "t"))
    P = np.exp(logP)
    for i in range(n - 1):
        seg = out[starts[i] : starts[i + 1]]
        if name in ("ced", "kld"):
            run_blocks(K.ced_rows, (P[i].copy(),), logP[i + 1 :], (), seg)
            if name == "kld":
                seg -= float(-(P[i] * logP[i]).sum())
        else:
            run_blocks(_PROB_KERNELS[name], (P[i].copy(),), P[i + 1 :], (), seg)
    return out


_LOGIT_KERNELS: dict[str, Callable[..., None]] = {"euc": K.euc_rows, "cos": K.cos_rows}
_PROB_KERNELS: dict[str, Callable[..., None]] = {
    "jsd": K.jsd_rows, "tri": K.tri_rows, "hellinger": K.hellinger_rows,
}
