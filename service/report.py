"""The evaluation as one self-contained HTML page (issue 14): the recommendation in words, the sweep,
the tables, the roughness curve and the Shepard grid of the recommended metric.

Every figure is inline (a `data:image/png;base64` URI), the style sheet is in the page and the icon
is an empty data URI (else a browser asks the server for /favicon.ico): no script, no font, no
request to anywhere, so the file works offline and can be mailed as it is.
"""

from __future__ import annotations

import base64
import html
import json
from typing import Any

from core.evaluation import CHEAPER, TIE_RHO, TIE_STANDARD_ERRORS, TRI_EXACT_RHO
from core.metrics import INDEXABLE

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1250px;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
.meta { color: #555; font-size: 0.9rem; }
.advice { background: #eef6ee; border-left: 4px solid #2e7d32; padding: 0.8rem 1rem; }
.advice.none { background: #fff4e5; border-left-color: #ef6c00; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f4f4f6; } td.best { font-weight: 600; background: #eef6ee; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
code { background: #f4f4f6; padding: 0.1rem 0.3rem; border-radius: 3px; font-size: 0.85rem; }
footer { color: #666; font-size: 0.8rem; margin-top: 2.5rem; }
"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _num(v: Any, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _per_t(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(evaluation.get("summary") or evaluation.get("results") or [], key=lambda r: r["temperature"])


def _rho_table(evaluation: dict[str, Any]) -> str:
    rows = _per_t(evaluation)
    many = evaluation.get("summary") is not None
    head = "".join(f"<th>t = {r['temperature']:g}</th>" for r in rows)
    body = []
    for m in evaluation["metrics"]:
        cells = []
        for r in rows:
            cell = r["rho"].get(m) or {}
            v = cell.get("mean") if many else cell.get("value")
            text = _num(v) + (f" ±{cell['std']:.4f}" if many and cell.get("std") is not None else "")
            best = ' class="best"' if r["recommendation"]["best"] == m else ""
            cells.append(f"<td{best}>{html.escape(text)}</td>")
        body.append(f"<tr><td>{html.escape(m)}</td>{''.join(cells)}</tr>")
    extra = [("mean MR of the rows", [f"{r['mean_roughness']:.3g}" for r in rows]),
             ("search with", [r["recommendation"]["best"] or "-" for r in rows]),
             ("indexed", ["-" if r["recommendation"].get("indexed") is None
                          else ("yes" if r["recommendation"]["indexed"] else "no") for r in rows]),
             ("best evaluation-only", [f"{r['recommendation'].get('evaluation_only') or '-'}" for r in rows])]
    for label, values in extra:
        body.append(f"<tr><td>{html.escape(label)}</td>" + "".join(f"<td>{html.escape(v)}</td>" for v in values)
                    + "</tr>")
    return f"<table><thead><tr><th>metric</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _label_table(evaluation: dict[str, Any]) -> str:
    rows = [r for r in _per_t(evaluation) if r.get("labels")]
    if not rows:
        return ""
    k = next(iter(rows[0]["labels"].values()))["k"]
    head = "".join(f"<th>t = {r['temperature']:g}</th>" for r in rows)
    body = []
    for m in INDEXABLE:
        cells = "".join(f"<td>{_num(r['labels'][m]['agreement'], 3)} / {_num(r['labels'][m]['map'], 3)}</td>"
                        for r in rows)
        body.append(f"<tr><td>{m}</td>{cells}</tr>")
    info = evaluation.get("labels") or {}
    n = rows[0]["labels"]["tri"]["n_queries"]
    return (f"<h2>Semantic check: neighbours that share the query's <code>{html.escape(str(info.get('field')))}"
            f"</code></h2><p>Label agreement@{k} (the share of each query's {k} nearest points, found by an exact "
            f"search with the metric, that carry its label) / mean average precision over the whole ranking, "
            f"averaged over {n} labelled queries; {info.get('labelled', 0):,} points of the sample carry one of "
            f"{info.get('distinct', 0):,} labels.</p>"
            f"<table><thead><tr><th>metric</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def _words(evaluation: dict[str, Any]) -> str:
    sweep = evaluation.get("sweep")
    rows = _per_t(evaluation)
    if sweep is None:
        advice = rows[0]["recommendation"]["advice"] if rows else "nothing was evaluated"
        return f'<p class="advice">{html.escape(advice)}.</p>'
    parts = [(f'<p class="advice{" none" if sweep["metric"] is None else ""}" id="recommendation">'
             f"{html.escape(sweep['advice'])}.</p>")]
    if sweep.get("build"):
        b = sweep["build"]
        parts.append(f"<p>The collection has no ready index for it yet; build one with <code>{html.escape(b['method'])} "
                     f"{html.escape(b['path'])}</code> and the body <code>{html.escape(json.dumps(b['body']))}</code>.</p>")
    elif sweep.get("indexed"):
        parts.append("<p>The collection already has a ready index for it.</p>")
    at = next((r for r in rows if r["temperature"] == sweep.get("temperature")), None)
    if at is not None:
        parts.append(f"<p>At that temperature: {html.escape(at['recommendation']['advice'])}.</p>")
    return "".join(parts)


def report_html(evaluation: dict[str, Any], *, sweep_png: bytes, roughness_png: bytes,
                shepard_png: bytes | None, shepard_metric: str | None, shepard_query: Any = None,
                generated: str = "") -> str:
    """The page for one evaluation answer (the JSON of POST .../evaluate, queries and several
    temperatures) and its three pictures."""
    name = html.escape(evaluation["collection"])
    sample = evaluation["sample"]
    drawn = (f"a uniform sample of {sample['size']:,} of {sample['of']:,} points (seed {sample['seed']})"
             if sample["sampled"] else f"all {sample['of']:,} points")
    queries = evaluation.get("query", {}).get("ids")
    what = f"{len(queries)} random stored points as queries" if queries else "one query"
    auto = evaluation.get("auto")
    how_t = (f"an automatic sweep of {len(auto['temperatures'])} temperatures from t = {auto['high']['temperature']:.3g} "
             f"(mean MR {auto['high']['mean_roughness']:.2g}) to t = {auto['low']['temperature']:.3g} (mean MR "
             f"{auto['low']['mean_roughness']:.2g}), found on {auto['rows']:,} rows") if auto else "the temperatures asked"
    shepard = ""
    if shepard_png is not None:
        shepard = (f"<h2>Shepard diagrams of the recommended metric ({html.escape(str(shepard_metric))})</h2>"
                   f"<p>CED against {html.escape(str(shepard_metric))} for the query "
                   f"<code>{html.escape(str(shepard_query))}</code> at each temperature; the red line is the "
                   "isotonic regression, drawn under the points.</p>" + _img(shepard_png, "Shepard grid"))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,"><title>logitsearch report: {name}</title><style>{STYLE}</style></head>
<body>
<h1>Which metric keeps the network's order: <code>{name}</code></h1>
<p class="meta">{html.escape(what)}, each compared with {html.escape(drawn)}; {html.escape(how_t)}.
{html.escape(generated)}</p>
<h2>Recommendation</h2>
{_words(evaluation)}
<h2>Spearman's rho against CED across temperatures</h2>
{_img(sweep_png, "rho against temperature")}
{_rho_table(evaluation)}
{_label_table(evaluation)}
<h2>Measure of roughness against temperature</h2>
<p>The paper (section 10.2) suggests exploring the temperatures that take the mean measure of roughness
(eq. 17) down to about 1e-6; the shaded span is the sweep.</p>
{_img(roughness_png, "mean roughness against temperature")}
{shepard}
<footer>{html.escape(evaluation["reference"])}. The recommendation is the searchable metric (euc, cos, tri; ced is
the reference) with the highest rho; rhos within {TIE_RHO:g} for one query, or within {TIE_STANDARD_ERRORS:g}
standard errors of the paired per-query difference for many, are ties and go to the cheaper metric
({html.escape(CHEAPER)}). rho &ge; {TRI_EXACT_RHO} counts as keeping CED's order.
Made by logitsearch.</footer>
</body></html>
"""
