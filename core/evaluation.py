"""Which metric keeps the network's cross-entropy order: the paper's evaluation (sections 3 and 9).

The reference is CED(q : p) over softmax(x/t) with the query as the first argument (eq. 2). Spearman's
rho (eq. 8) between it and each other function says how well that function preserves the network's
own order of the rows. Three forms:

- `evaluate(..., mode="one_to_many")`: one query against many rows, the paper's main method. Every
  metric comes from one fused pass over the rows (`core.kernels.all_logit_rows`) and CED is ranked
  once (`core.ranks.SharedRanks`) and shared by every metric.
- `evaluate(..., mode="many_to_many")`: all pairs i < j within the rows (the paper's `pdist` check).
  CED and KLD are asymmetric: the pair (i, j) is scored as F(row i : row j), the EARLIER row being
  the query, as in `core.divergences.pairwise` and scipy's condensed `pdist` order.
- `evaluate_queries`: n random rows as queries, each against the others; rho summarised per metric
  (mean, median, min, max, std), the paper's "repeated with many different elements" as one call.

Plus `shepard_data` (the points and isotonic line of a Shepard diagram), `roughness_guide`
(eqs. 16-17, section 10.2: the temperature at which the mean roughness reaches a target) and
`auto_temperatures` (a sweep over the range where the mean roughness falls from 1e-1 to 1e-6).

Each temperature's recommendation names a metric the user can search with (issue 14): the best of
the searchable stand-ins for CED (euc, cos, tri), ties going to the cheaper one; the best
evaluation-only metric (jsd, hellinger; kld in many_to_many) is reported beside it. With label codes
the one_to_many forms also score each searchable metric's exact k nearest neighbours against the
labels (`core.labels`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from core import kernels as K
from core.divergences import ALL_COLUMNS, run_blocks
from core.errors import InvalidInput, LimitExceeded
from core.labels import Codes, LabelScore, LabelTally, check_codes, check_k
from core.metrics import INDEXABLE
from core.ranks import RankMode, Rho, SharedRanks
from core.roughness import RoughnessTemperature, mean_roughness, roughness, temperature_for_roughness
from core.softmax import log_softmax
from core.validate import as_rows, as_vector, check_temperature

Floats = npt.NDArray[np.float64]
Mode = Literal["one_to_many", "many_to_many"]

#: the metrics compared with CED, in the order they are reported by default
EVAL_METRICS: tuple[str, ...] = ("euc", "cos", "tri", "jsd", "hellinger", "kld")

#: rho(CED, TRI) at or above this makes TRI an exact stand-in for CED: the paper calls correlations of
#: this size "almost perfect" (section 4), and at 0.99 a k-NN list under TRI differs from the CED list
#: only among near-ties. A result carries the threshold it was judged by.
TRI_EXACT_RHO = 0.99

#: many_to_many scores n (n - 1) / 2 pairs at O(d) each: 1,000 rows of d = 1000 are 499,500 pairs,
#: ~4 s per temperature on 2 cores
MANY_TO_MANY_MAX_ROWS = 1_000
#: evaluate_queries makes one full pass over the rows per query and temperature
MAX_QUERIES = 100
MAX_TEMPERATURES = 32

#: the metrics an index can be built for and searched with, cheapest to keep first. Measured per
#: query (benchmarks/metric_cost.py: flat, 20k-50k ImageNet rows, k = 10) the four cost about the same
#: (within ~2x of each other; ced's inner-product pass was even the fastest in batches), so
#: "cheaper" is what a metric makes the user keep: euc and cos search the raw logits, ONE index
#: serves every temperature and a query needs no softmax; tri and ced need an index (n x d float32,
#: a softmax of every row to build) per temperature. euc is put before cos (the same cost; the
#: paper's and our evaluations find euc the closer to CED). Ties in rho go to the cheaper metric.
SEARCHABLE: tuple[str, ...] = INDEXABLE
#: said wherever a tie is broken
CHEAPER = ("euc, cos (raw logits: one index for every temperature, no softmax) before tri (an index per "
           "temperature)")
#: the searchable metrics an evaluation compares with CED (ced is the reference: rho 1 by definition)
STAND_INS: tuple[str, ...] = ("euc", "cos", "tri")
#: two rhos of one query within this are a tie: equal to the 4th decimal, as printed
TIE_RHO = 1e-4
#: over many queries, two mean rhos within this many standard errors of their paired per-query
#: difference (or within TIE_RHO) are a tie: the sample cannot tell them apart
TIE_STANDARD_ERRORS = 2.0
#: `auto_temperatures`: points of the sweep, and the mean roughness at its two ends (section 10.2)
AUTO_POINTS = 8
AUTO_ROUGHNESS = (1e-1, 1e-6)

_COLUMN = {name: i for i, name in enumerate(ALL_COLUMNS)}
_MR = len(ALL_COLUMNS)  # the kernel's extra column: MR(p) of each row (eq. 17)


# --- where the rows are ----------------------------------------------------------------------------


class Rows:
    """The rows of one evaluation, as the computation reads them: in one array (`ArrayRows`), or
    spread over the shards of a collection (service/sharded_sample.py, issue 13), where each shard
    computes its own rows' values and only queries and value columns travel.

    Everything an evaluation needs of its rows is one of four reads, each answered in the rows'
    order: the value `columns` of one query at t (the ranking over them is done by the caller, over
    all rows at once), a few `rows` (the queries of `evaluate_queries`, every row for many_to_many),
    the `mean_roughness` at t (eq. 17; a sharded sample sums its shards' sums), and a subset (`take`).
    """

    n: int
    d: int

    def columns(self, xq: Floats, t: float) -> Floats:
        """(n, 8) float64: `ALL_COLUMNS` of query logits xq (d,) against each row at t, then MR."""
        raise NotImplementedError

    def rows(self, positions: npt.NDArray[np.intp]) -> npt.NDArray[Any]:
        """(m, d) logits of the rows at `positions`."""
        raise NotImplementedError

    def mean_roughness(self, t: float) -> float:
        """Mean MR of softmax(x/t) over the rows (eq. 17)."""
        raise NotImplementedError

    def take(self, positions: npt.NDArray[np.intp]) -> Rows:
        """The rows at `positions` (sorted, distinct), as Rows of their own."""
        raise NotImplementedError

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, positions: npt.NDArray[np.intp]) -> Rows:
        return self.take(np.asarray(positions, dtype=np.intp))


class ArrayRows(Rows):
    """Rows held in one (n, d) array of logits (float32 or float64, made C-contiguous)."""

    def __init__(self, X: Any) -> None:
        # C order: the kernel then compiles for two layouts only (float32 and float64 rows)
        self.X = np.ascontiguousarray(as_rows(X, "vectors"))
        self.n, self.d = int(self.X.shape[0]), int(self.X.shape[1])

    def columns(self, xq: Floats, t: float) -> Floats:
        return _columns(xq, self.X, t)

    def rows(self, positions: npt.NDArray[np.intp]) -> npt.NDArray[Any]:
        return self.X[positions]

    def mean_roughness(self, t: float) -> float:
        return mean_roughness(self.X, t)

    def take(self, positions: npt.NDArray[np.intp]) -> Rows:
        return ArrayRows(self.X[positions])


def columns(xq: Any, X: Any, t: float) -> Floats:
    """(n, 8) float64: CED, KLD, JSD, TRI, Hellinger, EUC, COS (`ALL_COLUMNS`) of query logits xq
    (d,) against each row of logits X (n, d) at t, then MR(softmax(x/t)) of each row (eq. 17): the
    values every evaluation ranks, from one pass over the rows (a shard's part of a sharded one)."""
    A = ArrayRows(X)
    return A.columns(as_vector(xq, "vector", A.d), check_temperature(t, "temperature"))


# --- results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recommendation:
    """What a temperature's rhos suggest.

    best: the searchable stand-in (`STAND_INS`) to search with: among those whose rho is tied with
    the highest (`tied`, within `tie_margin` of it; cheapest first), the cheapest; None when no
    searchable metric has a defined rho. rho: its rho (the mean, for many queries).
    evaluation_only: the best-correlated metric that cannot be searched (jsd, hellinger, and kld in
    many_to_many; in one_to_many KLD is CED minus a constant for a fixed query, eq. 9, so its rho is
    1 by construction and it is left out), with its rho.
    tri_exact: rho(CED, TRI) >= `threshold`; None when TRI was not evaluated or its rho is undefined.
    euc_beats_cos: rho(CED, EUC) > rho(CED, COS); None unless both are evaluated and defined.
    """

    best: str | None
    tri_exact: bool | None
    euc_beats_cos: bool | None
    threshold: float
    advice: str
    rho: float | None = None
    tied: tuple[str, ...] = ()
    tie_margin: float = TIE_RHO
    evaluation_only: str | None = None
    evaluation_only_rho: float | None = None


@dataclass(frozen=True)
class TemperatureResult:
    """One temperature of one evaluation.

    n: values correlated (rows compared in one_to_many, pairs in many_to_many). rho: per metric,
    NaN with a reason when undefined. ranked: metrics best-first (undefined last).
    query_roughness: MR of softmax(query/t) (None in many_to_many); mean_roughness: mean MR of the
    compared rows at t. seconds: wall time of this temperature.
    """

    t: float
    n: int
    rho: dict[str, Rho]
    ranked: tuple[str, ...]
    recommendation: Recommendation
    query_roughness: float | None
    mean_roughness: float
    seconds: float
    labels: dict[str, LabelScore] | None = None


@dataclass(frozen=True)
class Evaluation:
    """`evaluate`'s answer: one `TemperatureResult` per temperature, in the order asked."""

    mode: Mode
    ranks: RankMode
    metrics: tuple[str, ...]
    n_rows: int
    results: tuple[TemperatureResult, ...]
    seconds: float


@dataclass(frozen=True)
class RhoSummary:
    """rho of one metric over many queries: population statistics (std with ddof=0) of the defined
    values; `n_defined` counts them. All NaN, with a reason, when no query gave a defined rho."""

    mean: float
    median: float
    min: float
    max: float
    std: float
    n_defined: int
    reason: str | None = None


@dataclass(frozen=True)
class TemperatureSummary:
    """One temperature of `evaluate_queries`. The recommendation is judged on the mean rhos, ties
    within `TIE_STANDARD_ERRORS` standard errors of the paired per-query difference; query_roughness
    is the mean MR of the queries, mean_roughness the mean MR of all rows. labels: per searchable
    metric, when label codes were given."""

    t: float
    n_queries: int
    n: int
    rho: dict[str, RhoSummary]
    ranked: tuple[str, ...]
    recommendation: Recommendation
    query_roughness: float
    mean_roughness: float
    seconds: float
    labels: dict[str, LabelScore] | None = None


@dataclass(frozen=True)
class QueriesEvaluation:
    """`evaluate_queries`' answer; `query_rows` are the row positions used as queries."""

    ranks: RankMode
    metrics: tuple[str, ...]
    n_rows: int
    query_rows: tuple[int, ...]
    results: tuple[TemperatureSummary, ...]
    seconds: float


@dataclass(frozen=True)
class ShepardData:
    """A Shepard diagram's points: CED (x) against the metric (y) for a sample of the compared rows,
    sorted by CED, with the isotonic regression of the metric on CED (fitted on ALL compared rows)
    and rho over all `n` rows."""

    metric: str
    t: float
    ced: Floats
    values: Floats
    fitted: Floats
    rho: Rho
    n: int


@dataclass(frozen=True)
class RoughnessGuide:
    """Guidance for picking t (section 10.2): the temperature reaching `target` mean MR (if asked)
    and the mean MR at each given temperature, over `n` rows."""

    n: int
    target: RoughnessTemperature | None
    at: tuple[tuple[float, float], ...]


# --- validation -----------------------------------------------------------------------------------


def check_metrics(metrics: Sequence[str] | str | None, field: str = "metrics") -> tuple[str, ...]:
    """The metrics to compare with CED (default `EVAL_METRICS`), duplicates dropped, order kept."""
    if metrics is None:
        return EVAL_METRICS
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    if not names:
        raise InvalidInput(field, f"must name at least one metric; known: {', '.join(EVAL_METRICS)}")
    for name in names:
        if name == "ced":
            raise InvalidInput(field, "ced is the reference every metric is compared with; "
                               f"choose from {', '.join(EVAL_METRICS)}")
        if not isinstance(name, str) or name not in EVAL_METRICS:
            raise InvalidInput(field, f"unknown metric {name!r}; known: {', '.join(EVAL_METRICS)}")
    return tuple(dict.fromkeys(names))


def check_temperatures(temperatures: Any, field: str = "temperatures") -> tuple[float, ...]:
    """One temperature or a sweep, each finite, > 0 and within core's stable range; duplicates
    dropped, order kept; at most `MAX_TEMPERATURES`."""
    if isinstance(temperatures, np.ndarray):
        values = list(temperatures.ravel())
    elif isinstance(temperatures, (list, tuple)):
        values = list(temperatures)
    else:
        values = [temperatures]
    if not values:
        raise InvalidInput(field, "must give at least one temperature")
    if len(values) > MAX_TEMPERATURES:
        raise LimitExceeded(field, f"at most {MAX_TEMPERATURES} temperatures, got {len(values)}")
    return tuple(dict.fromkeys(check_temperature(t, field) for t in values))


def _check_choice(value: Any, field: str, known: tuple[str, ...]) -> Any:
    if value not in known:
        raise InvalidInput(field, f"unknown {field} {value!r}; known: {', '.join(known)}")
    return value


def _check_row(index: Any, n: int, field: str) -> int:
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= int(index) < n:
        raise InvalidInput(field, f"must be a row number in [0, {n}), got {index!r}")
    return int(index)


# --- the computation ------------------------------------------------------------------------------


def _columns(xv: Floats, A: npt.NDArray[Any], t: float, out: Floats | None = None) -> Floats:
    """(n, 8): `ALL_COLUMNS` of query logits xv against each row of A at t, then MR of each row.

    `core.divergences.all_logits` plus the roughness column, from the same single pass; inputs are
    checked once by the caller (many_to_many calls this n times on slices of one checked array).
    """
    logq = log_softmax(xv, t)
    if out is None:
        out = np.empty((A.shape[0], _MR + 1), dtype=np.float64)
    # through run_blocks: small inputs stay on the calling thread, strided/read-only rows go in blocks
    run_blocks(K.all_logit_rows, (xv, np.exp(logq), logq), A, (1.0 / t,), out)
    return out


def _same_order(ref_sorted: Floats, values: Floats, order: npt.NDArray[np.intp]) -> bool:
    """True when `values` orders the rows exactly as the reference does, ties included: then their
    average ranks are identical and rho is exactly 1 (KLD for a fixed query, eq. 9), which the
    floating-point Pearson formula would only reach to within an ulp or two."""
    v = values[order]
    dv = np.diff(v)
    return bool(np.all(dv >= 0) and np.array_equal(dv > 0, np.diff(ref_sorted) > 0))


_OVERFLOW = "non-finite values: logits too large for float64 arithmetic (core is stable up to |x| ~ 1e4)"


def _rhos(C: Floats, metrics: tuple[str, ...], ranks: RankMode) -> dict[str, Rho]:
    ref = np.ascontiguousarray(C[:, 0])
    if not np.isfinite(ref).all():
        return {name: Rho(math.nan, _OVERFLOW) for name in metrics}
    shared = SharedRanks(ref, ranks)  # CED ranked once for every metric
    order = np.argsort(ref)  # any order of tied values will do for _same_order
    ref_sorted = ref[order]
    out: dict[str, Rho] = {}
    for name in metrics:
        values = np.ascontiguousarray(C[:, _COLUMN[name]])
        if not np.isfinite(values).all():
            out[name] = Rho(math.nan, _OVERFLOW)
        elif ref_sorted[0] != ref_sorted[-1] and _same_order(ref_sorted, values, order):
            out[name] = Rho(1.0)
        else:
            out[name] = shared.rho(values)
    return out


def _ranked(values: dict[str, float]) -> tuple[str, ...]:
    defined = [m for m in values if not math.isnan(values[m])]
    undefined = [m for m in values if math.isnan(values[m])]
    return tuple(sorted(defined, key=lambda m: -values[m])) + tuple(undefined)


def _one_query_margin(a: str, b: str) -> float:
    return TIE_RHO


def _recommend(values: dict[str, float], mode: Mode, t: float,
               margin: Callable[[str, str], float] = _one_query_margin,
               margin_text: str = f"{TIE_RHO:g}") -> Recommendation:
    """The recommendation at one t from each metric's rho (or mean rho); `margin(top, other)` is the
    difference within which `other` counts as tied with the top searchable metric."""
    defined = {m: v for m, v in values.items() if not math.isnan(v)}
    searchable = [m for m in STAND_INS if m in defined]  # cheapest first
    best: str | None = None
    rho: float | None = None
    tied: tuple[str, ...] = ()
    tie = TIE_RHO
    if searchable:
        top = max(searchable, key=lambda m: defined[m])
        tied = tuple(m for m in searchable if defined[top] - defined[m] <= margin(top, m))
        best, rho = tied[0], defined[tied[0]]
        tie = max((margin(top, m) for m in tied), default=TIE_RHO)
    others = [m for m in defined if m not in STAND_INS and not (mode == "one_to_many" and m == "kld")]
    if not others and not searchable and "kld" in defined:
        others = ["kld"]
    other = max(others, key=lambda m: defined[m]) if others else None
    tri = values.get("tri", math.nan)
    tri_exact = None if math.isnan(tri) else bool(tri >= TRI_EXACT_RHO)
    euc, cos = values.get("euc", math.nan), values.get("cos", math.nan)
    euc_beats_cos = None if math.isnan(euc) or math.isnan(cos) else bool(euc > cos)
    parts = []
    if best is None or rho is None:
        parts.append(f"at t={t:g} no searchable metric (euc, cos, tri) has a defined rank correlation with CED")
    else:
        parts.append(f"at t={t:g}, search with {best} (rho {rho:.4f})")
        if len(tied) > 1:
            rest = ", ".join(f"{m} {defined[m]:.4f}" for m in tied[1:])
            parts.append(f"it ties with {rest} (within {margin_text}) and ties go to the cheaper searchable "
                         f"metric: {CHEAPER}")
        if rho < TRI_EXACT_RHO:
            parts.append(f"no searchable stand-in reaches rho {TRI_EXACT_RHO}: search ced at t={t:g} (the "
                         "reference itself, exact) when CED's own order matters")
    if other is not None:
        parts.append(f"best evaluation-only metric: {other} (rho {defined[other]:.4f}; not searchable)")
    if tri_exact is not None:
        verdict = "is" if tri_exact else "is not"
        parts.append(f"tri {verdict} an exact stand-in for CED (rho {tri:.4f}, threshold {TRI_EXACT_RHO})")
    if euc_beats_cos is not None:
        parts.append(f"euc {'beats' if euc_beats_cos else 'does not beat'} cos ({euc:.4f} vs {cos:.4f})")
    return Recommendation(best, tri_exact, euc_beats_cos, TRI_EXACT_RHO, "; ".join(parts), rho, tied, tie,
                          other, None if other is None else defined[other])


def _paired_margin(per_query: dict[str, list[float]]) -> Callable[[str, str], float]:
    """`TIE_STANDARD_ERRORS` standard errors (ddof 1) of the mean per-query difference of two
    metrics' rhos over the queries where both are defined, at least `TIE_RHO`."""
    def margin(a: str, b: str) -> float:
        d = np.asarray(per_query[a], dtype=np.float64) - np.asarray(per_query[b], dtype=np.float64)
        d = d[~np.isnan(d)]
        se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size >= 2 else 0.0
        return max(TIE_RHO, TIE_STANDARD_ERRORS * se)
    return margin


def smallest_reaching(results: Sequence[TemperatureResult | TemperatureSummary], metric: str,
                      threshold: float = TRI_EXACT_RHO) -> float | None:
    """The smallest temperature at which `metric`'s rho (mean rho for summaries) is >= threshold,
    None when it reaches it at none of them."""
    reached = [r.t for r in results if metric in r.rho and _value(r.rho[metric]) >= threshold]
    return min(reached) if reached else None


def _value(r: Rho | RhoSummary) -> float:
    v = r.value if isinstance(r, Rho) else r.mean
    return -math.inf if math.isnan(v) else v


def _result(t: float, C: Floats, metrics: tuple[str, ...], ranks: RankMode, mode: Mode,
            query_mr: float | None, mean_mr: float, started: float,
            labels: dict[str, LabelScore] | None = None) -> TemperatureResult:
    rho = _rhos(C, metrics, ranks)
    values = {m: r.value for m, r in rho.items()}
    return TemperatureResult(t=t, n=C.shape[0], rho=rho, ranked=_ranked(values),
                             recommendation=_recommend(values, mode, t), query_roughness=query_mr,
                             mean_roughness=mean_mr, seconds=time.perf_counter() - started, labels=labels)


#: the column of each searchable metric's distance in `_columns` (CED is column 0)
_DISTANCE = {m: _COLUMN[m] for m in SEARCHABLE}


def _tallies(k: int) -> dict[str, LabelTally]:
    return {m: LabelTally(k) for m in SEARCHABLE}


def _tally(tallies: dict[str, LabelTally], C: Floats, codes: Codes, label: int) -> None:
    """One query's exact k-NN under each searchable metric (the distances of `C`, float64) against
    the labels `codes` of its compared rows."""
    for m, tally in tallies.items():
        tally.add(np.ascontiguousarray(C[:, _DISTANCE[m]]), codes, label)


def _query_roughness(xv: Floats, t: float) -> float:
    return float(roughness(np.exp(log_softmax(xv, t))[None, :])[0])


def _pairs(A: npt.NDArray[Any], t: float) -> Floats:
    """(n (n-1) / 2, 8) columns of every pair i < j, row i the query, in scipy's `pdist` order."""
    n = A.shape[0]
    C = np.empty((n * (n - 1) // 2, _MR + 1), dtype=np.float64)
    start = 0
    for i in range(n - 1):
        stop = start + n - 1 - i
        _columns(np.ascontiguousarray(A[i], dtype=np.float64), A[i + 1 :], t, C[start:stop])
        start = stop
    return C


def _compared_count(n: int, exclude: int | None) -> int:
    m = n - (exclude is not None)
    if m < 2:
        raise InvalidInput("sample", f"needs at least 2 points to compare with the query, got {m}")
    return m


def _rows(X: Any) -> Rows:
    return X if isinstance(X, Rows) else ArrayRows(X)


def _all_rows(A: Rows) -> npt.NDArray[Any]:
    """Every row as one array (many_to_many: each row is the query of the rows after it)."""
    return A.X if isinstance(A, ArrayRows) else np.ascontiguousarray(A.rows(np.arange(A.n)))


def _the_query(A: Rows, query: Any, exclude: int | None, what: str) -> tuple[Floats, int | None]:
    """(query logits, row to leave out): `query` if given, else row `exclude` of A."""
    ex = None if exclude is None else _check_row(exclude, A.n, "exclude")
    if query is None:
        if ex is None:
            raise InvalidInput("query", f"{what} needs a query: a stored id or a vector")
        xv = np.ascontiguousarray(A.rows(np.array([ex], dtype=np.intp))[0], dtype=np.float64)
    else:
        xv = as_vector(query, "vector", A.d)
    _compared_count(A.n, ex)
    return xv, ex


def _compared_columns(xv: Floats, A: Rows, t: float, exclude: int | None) -> Floats:
    C = A.columns(xv, t)
    return C if exclude is None else np.delete(C, exclude, axis=0)


def evaluate(X: Any, temperatures: Any, *, query: Any = None, exclude: int | None = None,
             metrics: Sequence[str] | str | None = None, mode: Mode = "one_to_many",
             ranks: RankMode = "average", labels: Any = None, query_label: int | None = None,
             k: int = 10) -> Evaluation:
    """Spearman's rho of CED(q : p) at each temperature against each metric (paper sections 3, 9).

    X: (n, d) logits (float32 or float64). one_to_many: `query` is the query's logits (d,); if it is
    None, row `exclude` of X is the query. Row `exclude` (a stored query's own row) is left out of
    the compared set either way. many_to_many: no query; all n (n - 1) / 2 pairs, the earlier row
    first, n <= `MANY_TO_MANY_MAX_ROWS`. ranks: "average" (scipy's, for ties) or "paper" (the MATLAB
    tie-breaking of `core.ranks.paper_ranks`, CED first). euc and cos use the raw logits; the other
    metrics softmax(x/t). labels (one_to_many): a label code per row of X (`core.labels`; -1 none);
    each searchable metric's k nearest compared rows are scored against the query's label,
    `query_label` or, when None, the label of row `exclude`. Raises InvalidInput naming the field.
    """
    started = time.perf_counter()
    _check_choice(mode, "mode", ("one_to_many", "many_to_many"))
    _check_choice(ranks, "ranks", ("average", "paper"))
    names = check_metrics(metrics)
    ts = check_temperatures(temperatures)
    A = _rows(X)
    n = A.n
    results: list[TemperatureResult] = []
    if mode == "many_to_many":
        if query is not None or exclude is not None:
            raise InvalidInput("query", "many_to_many compares all pairs within the sample and takes no query")
        if n < 2:
            raise InvalidInput("sample", f"many_to_many needs at least 2 points, got {n}")
        if labels is not None:
            raise InvalidInput("labels", "the label check scores the neighbours of a query: not many_to_many")
        if n > MANY_TO_MANY_MAX_ROWS:
            raise LimitExceeded("sample", f"many_to_many compares at most {MANY_TO_MANY_MAX_ROWS} points "
                                f"({MANY_TO_MANY_MAX_ROWS * (MANY_TO_MANY_MAX_ROWS - 1) // 2} pairs), got {n}")
        R = _all_rows(A)
        for t in ts:
            t0 = time.perf_counter()
            C = _pairs(R, t)
            results.append(_result(t, C, names, ranks, mode, None, mean_roughness(R, t), t0))
        return Evaluation(mode, ranks, names, n, tuple(results), time.perf_counter() - started)

    xv, ex = _the_query(A, query, exclude, "one_to_many")
    codes: Codes | None = None
    label: int | None = None
    kk = 0
    if labels is not None:
        kk = check_k(k)
        codes = check_codes(labels, n)
        label = int(codes[ex]) if query_label is None and ex is not None else query_label
        if label is None:
            raise InvalidInput("labels", "a query vector has no label: give query_label or a stored query")
        if ex is not None:
            codes = np.delete(codes, ex)
    for t in ts:
        t0 = time.perf_counter()
        C = _compared_columns(xv, A, t, ex)
        scores = None
        if codes is not None and label is not None:
            tallies = _tallies(kk)
            _tally(tallies, C, codes, label)
            scores = {m: tally.score() for m, tally in tallies.items()}
        results.append(_result(t, C, names, ranks, mode, _query_roughness(xv, t),
                               float(C[:, _MR].mean()), t0, scores))
    return Evaluation(mode, ranks, names, n - (ex is not None), tuple(results), time.perf_counter() - started)


def _summary(values: list[float]) -> RhoSummary:
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        nan = float("nan")
        return RhoSummary(nan, nan, nan, nan, nan, 0, "rank correlation undefined for every query")
    return RhoSummary(float(v.mean()), float(np.median(v)), float(v.min()), float(v.max()),
                      float(v.std()), int(v.size))


def evaluate_queries(X: Any, temperatures: Any, *, n_queries: int, seed: int = 0,
                     metrics: Sequence[str] | str | None = None,
                     ranks: RankMode = "average", labels: Any = None, k: int = 10) -> QueriesEvaluation:
    """`n_queries` distinct random rows of X (seeded) each evaluated one_to_many against all other
    rows; rho summarised per metric and temperature. Cost: one pass over X per query and t. With
    `labels` (a code per row, -1 none), each searchable metric's exact k nearest other rows of each
    labelled query are scored against its label, from the same pass."""
    started = time.perf_counter()
    _check_choice(ranks, "ranks", ("average", "paper"))
    names = check_metrics(metrics)
    ts = check_temperatures(temperatures)
    A = _rows(X)
    n = A.n
    if isinstance(n_queries, bool) or not isinstance(n_queries, (int, np.integer)) or n_queries < 1:
        raise InvalidInput("queries.sample", f"must be a whole number >= 1, got {n_queries!r}")
    if n_queries > MAX_QUERIES:
        raise LimitExceeded("queries.sample", f"at most {MAX_QUERIES} queries, got {n_queries}")
    if n_queries > n:
        raise InvalidInput("queries.sample", f"{n_queries} queries but only {n} points to draw them from")
    _compared_count(n, 0)
    codes = None if labels is None else check_codes(labels, n)
    kk = check_k(k) if labels is not None else 0
    rows = np.random.default_rng(seed).choice(n, size=int(n_queries), replace=False)
    Q = A.rows(rows)  # the queries' own logits: all a sharded sample sends of its rows
    results: list[TemperatureSummary] = []
    for t in ts:
        t0 = time.perf_counter()
        per_metric: dict[str, list[float]] = {m: [] for m in names}
        query_mr: list[float] = []
        mean_mr = math.nan
        tallies = _tallies(kk) if codes is not None else None
        for i, r in enumerate(rows):
            xv = np.ascontiguousarray(Q[i], dtype=np.float64)
            C = A.columns(xv, t)
            mean_mr = float(C[:, _MR].mean())
            query_mr.append(float(C[r, _MR]))
            compared = np.delete(C, r, axis=0)
            for m, rho in _rhos(compared, names, ranks).items():
                per_metric[m].append(rho.value)
            if tallies is not None and codes is not None:
                _tally(tallies, compared, np.delete(codes, r), int(codes[r]))
        summaries = {m: _summary(v) for m, v in per_metric.items()}
        means = {m: s.mean for m, s in summaries.items()}
        rec = _recommend(means, "one_to_many", t, _paired_margin(per_metric),
                         f"{TIE_STANDARD_ERRORS:g} standard errors of the paired per-query difference, "
                         f"at least {TIE_RHO:g}")
        results.append(TemperatureSummary(
            t=t, n_queries=len(rows), n=n - 1, rho=summaries, ranked=_ranked(means),
            recommendation=rec, query_roughness=float(np.mean(query_mr)),
            mean_roughness=mean_mr, seconds=time.perf_counter() - t0,
            labels=None if tallies is None else {m: tally.score() for m, tally in tallies.items()}))
    return QueriesEvaluation(ranks, names, n, tuple(int(r) for r in rows), tuple(results),
                             time.perf_counter() - started)


def shepard_data(X: Any, t: float, metric: str, *, query: Any = None, exclude: int | None = None,
                 max_points: int = 10_000, seed: int = 0, ranks: RankMode = "average") -> ShepardData:
    """The points of a Shepard diagram (section 3): CED(q : p) against `metric` for the rows of X.

    The isotonic (non-decreasing) regression of the metric on CED is fitted on all compared rows by
    `scipy.optimize.isotonic_regression` (pool adjacent violators); at most `max_points` rows, drawn
    uniformly with `seed`, are returned for plotting. Query and `exclude` as in `evaluate`.
    """
    _check_choice(ranks, "ranks", ("average", "paper"))
    if not isinstance(metric, str):
        raise InvalidInput("metric", f"must be one metric name, got {metric!r}")
    name = check_metrics([metric], "metric")[0]
    (tt,) = check_temperatures(t, "temperature")
    if isinstance(max_points, bool) or not isinstance(max_points, (int, np.integer)) or max_points < 2:
        raise InvalidInput("max_points", f"must be a whole number >= 2, got {max_points!r}")
    A = _rows(X)
    xv, ex = _the_query(A, query, exclude, "a Shepard diagram")
    C = _compared_columns(xv, A, tt, ex)
    n = C.shape[0]
    rho = _rhos(C, (name,), ranks)[name]
    ced, values = C[:, 0], C[:, _COLUMN[name]]
    order = np.argsort(ced, kind="stable")
    fitted = np.empty(n)
    from scipy.optimize import isotonic_regression  # imported when first used (start-up time)

    fitted[order] = isotonic_regression(values[order], increasing=True).x
    keep = np.arange(n) if n <= max_points else np.random.default_rng(seed).choice(n, max_points, replace=False)
    keep = keep[np.argsort(ced[keep], kind="stable")]
    return ShepardData(name, tt, ced[keep], values[keep], fitted[keep], rho, n)


def roughness_guide(X: Any, *, target: float | None = None, temperatures: Any = None) -> RoughnessGuide:
    """The temperature at which the mean MR of the rows reaches `target` (section 10.2 suggests
    exploring down to MR ~ 1e-6; `core.roughness.temperature_for_roughness`, t to 1e-6 relative) and
    the mean MR at each of `temperatures`. At least one of the two must be given."""
    ts = () if temperatures is None or np.size(temperatures) == 0 else check_temperatures(temperatures)
    if target is None and not ts:
        raise InvalidInput("target", "give a target roughness, temperatures, or both")
    A = _rows(X)
    found = None if target is None else temperature_for_roughness(A, target)
    return RoughnessGuide(A.n, found, tuple((t, A.mean_roughness(t)) for t in ts))


@dataclass(frozen=True)
class AutoSweep:
    """`auto_temperatures`' answer: the sweep, and the temperatures found for its two ends
    (`high`: mean MR ~ AUTO_ROUGHNESS[0], `low`: ~ AUTO_ROUGHNESS[1]) over `n` rows."""

    temperatures: tuple[float, ...]
    high: RoughnessTemperature
    low: RoughnessTemperature
    n: int


def _round3(t: float) -> float:
    return float(f"{t:.3g}")


def auto_temperatures(X: Any, *, points: int = AUTO_POINTS, high: float = AUTO_ROUGHNESS[0],
                      low: float = AUTO_ROUGHNESS[1]) -> AutoSweep:
    """`points` log-spaced temperatures from where the mean MR of the rows (eq. 17) is `high` to
    where it is `low` (section 10.2 suggests exploring down to ~1e-6), both found by
    `core.roughness.temperature_for_roughness`, each rounded to 3 significant digits (within 0.5 %
    of t, so the ends' mean MR stays within ~1 % of the targets: MR falls like t^-2 at high t).
    An end the temperatures in [T_MIN, T_MAX] cannot reach is clamped (reachable=False). Raises
    InvalidInput when the rows' roughness does not fall between the two (e.g. constant rows)."""
    if isinstance(points, bool) or not isinstance(points, int) or not 2 <= points <= MAX_TEMPERATURES:
        raise InvalidInput("points", f"must be a whole number in [2, {MAX_TEMPERATURES}], got {points!r}")
    A = _rows(X)
    a = temperature_for_roughness(A, high)
    b = temperature_for_roughness(A, low)
    if not b.t > a.t * (1 + 1e-3):
        raise InvalidInput("temperatures", f"auto: the mean roughness of these rows is {a.roughness:.3g} to "
                           f"{b.roughness:.3g} over every temperature, not falling from {high:g} to {low:g}: "
                           "nothing to sweep; give temperatures")
    ts = tuple(dict.fromkeys(_round3(float(t)) for t in np.geomspace(a.t, b.t, points)))
    return AutoSweep(check_temperatures(ts), a, b, A.n)


@dataclass(frozen=True)
class SweepVerdict:
    """What a sweep of temperatures says as a whole: the smallest temperature at which TRI and EUC
    reach rho >= `threshold` (mean rho for many queries; None: at none of them), and the
    recommendation: the smallest temperature whose recommended metric reaches the threshold, and
    that metric (both None when none does)."""

    tri_reaches: float | None
    euc_reaches: float | None
    temperature: float | None
    metric: str | None
    threshold: float
    advice: str


def sweep_verdict(results: Sequence[TemperatureResult | TemperatureSummary]) -> SweepVerdict:
    """The verdict over the temperatures of one evaluation (in any order)."""
    tri_t, euc_t = smallest_reaching(results, "tri"), smallest_reaching(results, "euc")
    by_t = sorted(results, key=lambda r: r.t)
    good = [r for r in by_t if r.recommendation.rho is not None and r.recommendation.rho >= TRI_EXACT_RHO]
    ts = ", ".join(f"{r.t:g}" for r in by_t)

    def reach(name: str, t: float | None) -> str:
        if not any(name in r.rho for r in results):
            return f"{name} was not evaluated"
        return f"{name} reaches rho >= {TRI_EXACT_RHO} from t = {t:g}" if t is not None \
            else f"{name} reaches rho {TRI_EXACT_RHO} at none of them"

    parts = [f"over t = {ts}: {reach('tri', tri_t)}; {reach('euc', euc_t)}"]
    if good:
        r = good[0]
        metric = r.recommendation.best
        where = f"{metric} over raw logits" if metric in ("euc", "cos") else f"{metric} at t = {r.t:g}"
        parts.append(f"recommended: search with {where} (rho {r.recommendation.rho:.4f} against CED at t = {r.t:g}, "
                     "the smallest temperature of the sweep at which a searchable metric keeps CED's order)")
        return SweepVerdict(tri_t, euc_t, r.t, metric, TRI_EXACT_RHO, "; ".join(parts))
    rated = [r for r in by_t if r.recommendation.rho is not None]
    if rated:
        top = max(rated, key=lambda r: r.recommendation.rho or -1.0)
        parts.append(f"no searchable metric keeps CED's order here (highest: {top.recommendation.best} "
                     f"{top.recommendation.rho:.4f} at t = {top.t:g}): search ced itself, or sweep higher "
                     "temperatures")
    return SweepVerdict(tri_t, euc_t, None, None, TRI_EXACT_RHO, "; ".join(parts))
