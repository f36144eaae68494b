"""The metric registry: one name per metric, used by functions, JSON values and docs alike."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from core import divergences as D
from core.errors import InvalidInput

Space = Literal["logits", "probs"]
MetricName = Literal["ced", "kld", "jsd", "tri", "hellinger", "euc", "cos"]


@dataclass(frozen=True)
class Metric:
    """A dissimilarity: where it is computed, whether it is symmetric, its formula and units."""

    name: str
    space: Space
    symmetric: bool
    formula: str
    units: str
    fn: Callable[..., Any]


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("ced", "probs", False, "CED(q:p) = -sum_i q_i log p_i, p = softmax(x/t) (eq. 2)",
               "nats", D.ced),
        Metric("kld", "probs", False, "KLD(q:p) = sum_i q_i log(q_i/p_i) = CED(q:p) - H(q) (eqs. 3, 9)",
               "nats", D.kld),
        Metric("jsd", "probs", True, "JSD(q,p) = 1 - 1/2 sum_i h(q_i) + h(p_i) - h(q_i+p_i), "
               "h(x) = -x log2 x (eq. 4)", "bits, in [0, 1]", D.jsd),
        Metric("tri", "probs", True, "TRI(q,p) = 1/2 sum_i (q_i - p_i)^2 / (q_i + p_i) (eq. 5)",
               "in [0, 1]", D.tri),
        Metric("hellinger", "probs", True, "H^2(q,p) = sum_i (sqrt q_i - sqrt p_i)^2",
               "in [0, 2]", D.hellinger),
        Metric("euc", "logits", True, "EUC(u,v) = sum_i (u_i - v_i)^2 over raw logits (eq. 6)",
               "squared L2", D.euc),
        Metric("cos", "logits", True, "COS(u,v) = 1 - u.v / (|u| |v|) over raw logits "
               "(the paper's COS is twice this: same order)", "1 - cosine, in [0, 2]", D.cos),
    )
}


#: the metrics logitsearch can index and search, in the order a search prefers when none is named;
#: the one list every layer derives its vocabulary from (indexes/, service/ and the CLI)
INDEXABLE: tuple[str, ...] = ("euc", "cos", "tri", "ced")
#: metrics computed over softmax(x/t): they need a temperature
TEMPERED: frozenset[str] = frozenset(m for m in INDEXABLE if METRICS[m].space == "probs")


def metric(name: str) -> Metric:
    """The metric called `name`; InvalidInput listing the known names otherwise."""
    try:
        return METRICS[name]
    except (KeyError, TypeError):
        raise InvalidInput("metric", f"unknown metric {name!r}; known: {', '.join(METRICS)}") from None
