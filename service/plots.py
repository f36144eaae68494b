"""The evaluation's pictures as PNG (issue 14), like the paper's figures: rho against temperature for
each metric (with the label check beside it), mean roughness against temperature (Fig. 6), and a
grid of Shepard diagrams across temperatures (Figs. 5, 8, 9).

Drawn on `matplotlib.figure.Figure` with its own Agg canvas, never pyplot (global state, not
thread-safe; the routes run in a thread pool); matplotlib is imported on first use.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from core.evaluation import TRI_EXACT_RHO, ShepardData
from core.metrics import INDEXABLE
from service.shepard import DPI, draw_shepard

#: the searchable metrics' colours, the same in every picture
COLOURS = {"euc": "C0", "cos": "C1", "tri": "C2", "ced": "C3", "jsd": "C4", "hellinger": "C5", "kld": "C7"}
#: a grid has at most this many columns
GRID_COLUMNS = 4


def _figure(width: int, height: int) -> Any:
    # matplotlib takes ~0.7 s to import: loaded on the first picture, not at server start
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _log_t_axis(ax: Any, ts: Sequence[float]) -> None:
    """A log temperature axis ticked at the temperatures evaluated (a log axis's own minor labels
    overlap over a short span)."""
    from matplotlib.ticker import NullFormatter, NullLocator

    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    if ts:
        ax.set_xticks(list(ts), [f"{t:.3g}" for t in ts], fontsize=8)
    ax.set_xlabel("temperature t (log scale)")


def _per_t(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    rows = evaluation.get("summary") or evaluation.get("results") or []
    return sorted(rows, key=lambda r: r["temperature"])


def _rho_value(cell: dict[str, Any] | None) -> float:
    if cell is None:
        return math.nan
    v = cell.get("mean", cell.get("value"))
    return math.nan if v is None else float(v)


def sweep_png(evaluation: dict[str, Any], *, width: int = 900, height: int = 500) -> tuple[bytes, int]:
    """(PNG, panels) of an evaluation's answer (the JSON of POST .../evaluate): Spearman's rho against
    CED per metric over temperature (log axis), the 0.99 line marked; when the answer has label
    scores, a second panel with each searchable metric's label agreement@k (solid) and mean average
    precision (dotted)."""
    rows = _per_t(evaluation)
    ts = [r["temperature"] for r in rows]
    labelled = any(r.get("labels") for r in rows)
    fig = _figure(width, height)
    axes = fig.subplots(1, 2 if labelled else 1, squeeze=False)[0]
    ax = axes[0]
    for m in evaluation["metrics"]:
        ax.plot(ts, [_rho_value(r["rho"].get(m)) for r in rows], marker="o", markersize=3.5, linewidth=1.5,
                color=COLOURS.get(m), label=m)
    ax.axhline(TRI_EXACT_RHO, color="0.3", linestyle="--", linewidth=1, label=f"rho = {TRI_EXACT_RHO}")
    _log_t_axis(ax, ts)
    many = "mean " if evaluation.get("summary") else ""
    ax.set_ylabel(f"{many}Spearman rho against CED at t")
    ax.set_title(f"{evaluation['collection']}: how well each metric keeps CED's order", fontsize=10)
    ax.grid(True, alpha=0.25, which="both")
    ax.legend(fontsize=8, loc="lower right")
    if labelled:
        lx = axes[1]
        k = next(v["k"] for r in rows if r.get("labels") for v in r["labels"].values())
        for m in INDEXABLE:
            agree = [math.nan if not r.get("labels") or r["labels"][m]["agreement"] is None
                     else r["labels"][m]["agreement"] for r in rows]
            ap = [math.nan if not r.get("labels") or r["labels"][m]["map"] is None else r["labels"][m]["map"]
                  for r in rows]
            lx.plot(ts, agree, marker="o", markersize=3.5, linewidth=1.5, color=COLOURS[m],
                    label=f"{m} agreement@{k}")
            lx.plot(ts, ap, linestyle=":", linewidth=1.2, color=COLOURS[m], label=f"{m} MAP")
        _log_t_axis(lx, ts)
        field = (evaluation.get("labels") or {}).get("field", "label")
        lx.set_ylabel(f"same {field}: share of the {k} nearest / MAP")
        lx.set_title(f"semantic check: neighbours sharing the query's {field}", fontsize=10)
        lx.grid(True, alpha=0.25, which="both")
        lx.legend(fontsize=7, loc="best", ncols=2)
    return _png(fig), len(axes)


def roughness_png(curve: Sequence[tuple[float, float]], *, target: float = 1e-6, reached: float | None = None,
                  sweep: Sequence[float] = (), collection: str = "", width: int = 800,
                  height: int = 500) -> bytes:
    """Mean measure of roughness (eq. 17) against temperature, log-log, as the paper's Fig. 6: the
    `target` marked as a line, the temperature reaching it (`reached`) and the sweep's span shaded."""
    fig = _figure(width, height)
    ax = fig.add_subplot()
    ts, mr = [t for t, _ in curve], [v for _, v in curve]
    ax.plot(ts, mr, color="C0", linewidth=1.8, marker="o", markersize=2.5, label="mean MR of the rows")
    ax.axhline(target, color="C3", linestyle="--", linewidth=1, label=f"target MR = {target:g} (section 10.2)")
    if reached is not None:
        ax.axvline(reached, color="C3", linestyle=":", linewidth=1, label=f"t = {reached:.3g} reaches it")
    if sweep:
        ax.axvspan(min(sweep), max(sweep), color="C2", alpha=0.12,
                   label=f"auto sweep: t = {min(sweep):.3g} to {max(sweep):.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("temperature t (log scale)")
    ax.set_ylabel("mean MR of softmax(x/t) (log scale)")
    ax.set_title(f"{collection}: measure of roughness against temperature".lstrip(": "), fontsize=10)
    ax.grid(True, alpha=0.25, which="both")
    ax.legend(fontsize=8, loc="upper right")
    return _png(fig)


def shepard_grid_png(panels: Sequence[ShepardData], *, width: int = 1200, height: int | None = None) -> bytes:
    """One Shepard diagram per temperature in a grid (up to `GRID_COLUMNS` a row), rho in each
    panel's title, as the paper's Figs. 5, 8 and 9; `height` defaults to 300 pixels a row."""
    cols = min(GRID_COLUMNS, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = _figure(width, height or 300 * rows + 40)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, data in zip(axes, panels):
        draw_shepard(ax, data, compact=True)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    name = panels[0].metric.upper() if panels else ""
    fig.suptitle(f"Shepard diagrams: CED (x) against {name} (y), one query, by temperature", fontsize=11)
    return _png(fig)
