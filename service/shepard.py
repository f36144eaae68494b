"""Shepard diagrams as PNG (paper section 3): CED on x, a metric on y, the isotonic regression line,
Spearman's rho in the title.

Drawn on a `matplotlib.figure.Figure` with its own Agg canvas, never through pyplot: pyplot keeps
global state and is not thread-safe, and the routes run in a thread pool.
"""

from __future__ import annotations

import io
import math
from typing import Any

from core.evaluation import ShepardData
from core.metrics import METRICS

#: pixel bounds of a requested image
MIN_PIXELS, MAX_PIXELS = 200, 4000
DPI = 100


def draw_shepard(ax: Any, data: ShepardData, *, compact: bool = False, title: str | None = None) -> None:
    """`data`'s diagram on the matplotlib axes `ax`. The isotonic line is drawn thin and UNDER the
    points (issue 14: a thick line on top hid most of them); points are small, translucent dots."""
    name = data.metric.upper()
    ax.plot(data.ced, data.fitted, color="C3", linewidth=0.9, alpha=0.8, zorder=2, label="isotonic regression")
    ax.scatter(data.ced, data.values, s=4 if compact else 5, alpha=0.45, linewidths=0, color="C0", zorder=3,
               label=f"{data.ced.size:,} of {data.n:,} points" if data.ced.size < data.n else f"{data.n:,} points")
    rho = data.rho.value
    shown = f"rho = {rho:.4f}" if not math.isnan(rho) else f"rho undefined: {data.rho.reason}"
    if compact:
        ax.set_title(title or f"t = {data.t:g}: {shown}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("CED (nats)", fontsize=8)
        ax.set_ylabel(f"{name} ({METRICS[data.metric].units})", fontsize=8)
    else:
        ax.set_xlabel(f"CED(q : p), softmax at t = {data.t:g} (nats)")
        space = "raw logits" if METRICS[data.metric].space == "logits" else f"softmax at t = {data.t:g}"
        ax.set_ylabel(f"{name} ({space}; {METRICS[data.metric].units})")
        ax.set_title(title or f"CED vs {name} at t = {data.t:g}: Spearman {shown}", fontsize=11)
        ax.legend(loc="best", fontsize=8, markerscale=3)
    ax.grid(True, alpha=0.25)


def shepard_png(data: ShepardData, *, width: int = 800, height: int = 600, title: str | None = None) -> bytes:
    """The PNG bytes of `data`'s Shepard diagram, `width` x `height` pixels. An undefined rho is
    shown as such, with its reason."""
    # matplotlib takes ~0.7 s to import: loaded on the first diagram, not at server start
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    draw_shepard(fig.add_subplot(), data, title=title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()
