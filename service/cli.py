"""The `logitsearch` command line: serve, ingest, search, collections, evaluate, report, snapshot,
restore.

A mistake with a file, a row or a flag ends in ONE line naming the file or flag and the fix, and
exit status 2 (issue 14): `UsageError` carries that line; the server's own refusals exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core.errors import InvalidInput, StorageError
from core.metrics import INDEXABLE


class UsageError(Exception):
    """A mistake in what the user typed or pointed at: printed as one line, exit status 2."""


NPY_MAGIC = b"\x93NUMPY"


def _npy(path_text: str, flag: str) -> Any:
    """The array in the .npy file `path_text` (memory-mapped), or UsageError naming `flag`."""
    import numpy as np

    path = Path(path_text)
    if not path.exists():
        raise UsageError(f"{flag} {path}: no such file; give the path of a .npy file (numpy.save)")
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a directory; give the path of a .npy file")
    with open(path, "rb") as f:
        head = f.read(len(NPY_MAGIC))
    if head != NPY_MAGIC:
        raise UsageError(f"{flag} {path}: not a .npy file (no NumPy header); write the array with "
                         f"numpy.save('{path.name}', X)")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc) or "object" in str(exc):
            raise UsageError(f"{flag} {path}: holds Python objects, not numbers; save a float32 array: "
                             "numpy.save(path, X.astype(numpy.float32))") from None
        raise UsageError(f"{flag} {path}: cannot read it as .npy ({exc})") from None
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from None


def _logits(X: Any, path: str, flag: str) -> None:
    """UsageError unless X holds float32 or float64 logits."""
    if X.dtype.kind != "f" or X.dtype.itemsize not in (4, 8):
        raise UsageError(f"{flag} {path}: holds {X.dtype} values; logits must be float32 or float64: "
                         f"save X.astype(np.float32) (np.save('{Path(path).stem}_f32.npy', "
                         f"np.load('{path}').astype(np.float32)))")


def _query_vector(args: argparse.Namespace, client: Any) -> Any:
    """The row `--row` of `--vector-file`, checked against the collection's dimension."""
    X = _npy(args.vector_file, "--vector-file")
    _logits(X, args.vector_file, "--vector-file")
    if X.ndim not in (1, 2):
        raise UsageError(f"--vector-file {args.vector_file}: shape {X.shape}; give one query (dim,) or rows "
                         "(rows, dim) with --row")
    if X.ndim == 2:
        if not 0 <= args.row < X.shape[0]:
            raise UsageError(f"--row {args.row}: {args.vector_file} has {X.shape[0]} rows; give --row 0 to "
                             f"{X.shape[0] - 1}")
        X = X[args.row]
    dim = int(client.collection(args.name)["dim"])
    if X.shape[0] != dim:
        raise UsageError(f"--vector-file {args.vector_file}: the query has {X.shape[0]} numbers but collection "
                         f"{args.name!r} has dim {dim}; give a vector of {dim} logits")
    import numpy as np

    return np.asarray(X)


def _text_file(path_text: str, flag: str, what: str) -> str:
    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"{flag} {path}: no such file; give a text file with {what}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{flag} {path}: not UTF-8 text; give a text file with {what}") from None


def _list(values: Sequence[str] | None, flag: str, kind: Callable[[str], Any], example: str,
          auto: bool = False) -> Any:
    """One list syntax everywhere: `1,10`, `1 10` and `1, 10` are the same; with `auto`, the word
    auto alone is kept as it is."""
    if values is None:
        return None
    items = [v.strip() for text in values for v in text.split(",") if v.strip()]
    if auto and items == ["auto"]:
        return "auto"
    out = []
    for v in items:
        try:
            out.append(kind(v))
        except ValueError:
            raise UsageError(f"{flag}: {v!r} is not valid; give e.g. {flag} {example} or {flag} "
                             f"{example.replace(' ', ',')}" + (f" or {flag} auto" if auto else "")) from None
    if not out:
        raise UsageError(f"{flag}: give at least one value, e.g. {flag} {example}")
    return out


def _metric_name(v: str) -> str:
    if not v.isidentifier():
        raise ValueError(v)
    return v


def _stopped(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.auth import check_binding
    from service.lifecycle import exit_promptly, hold_data_dir
    from service.settings import load_settings
    from service.store import check_data_dir

    try:
        settings = load_settings({"host": args.host, "port": args.port, "data_dir": args.data_dir,
                                  "log_level": args.log_level,
                                  "allow_unauthenticated": args.allow_unauthenticated or None})
        binding = check_binding(settings)
        check_data_dir(Path(settings.data_dir))
        hold_data_dir(Path(settings.data_dir))  # one server per data directory; held until the process ends
    except (InvalidInput, StorageError) as exc:
        print(f"logitsearch: {exc}", file=sys.stderr)
        return 2
    print("logitsearch configuration: " + json.dumps(settings.redacted(), sort_keys=True), flush=True)
    print(f"logitsearch: {binding}", flush=True)
    # uvicorn drains requests and runs the lifespan (index snapshots) on SIGTERM, then re-raises the
    # signal; end with exit status 0 instead, so `docker stop` and systemd record a clean stop.
    signal.signal(signal.SIGTERM, _stopped)
    # log_config=None, access_log=False: service.observability writes every log line as JSON, one per request
    try:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                    timeout_graceful_shutdown=settings.drain_seconds, log_config=None, access_log=False)
    except SystemExit as stop:
        if stop.code in (0, None):  # SIGTERM (_stopped)
            exit_promptly()
        raise
    # snapshots are written: don't wait for the threads of requests cut off at the drain's end
    exit_promptly()
    return 0


# --- client commands -------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain fixed-width table; numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_number(r[i]) for r in rows) and bool(rows) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric)).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _client(args: argparse.Namespace) -> Any:
    from service.client import Client

    return Client(args.url, api_key=args.api_key)


def _point_id(raw: str, id_type: str) -> int | str:
    if id_type == "str":
        return raw
    if id_type == "int" or (raw.isdigit() and raw.isascii() and (raw == "0" or raw[0] != "0")):
        return int(raw)
    return raw


def _per_row(path: str, rows: int, parse: Callable[[str], Any], what: str, flag: str = "") -> list[Any]:
    """Line i of the text file `path`, parsed, for row i; UsageError naming the flag, file and line."""
    out = []
    text = _text_file(path, flag, what)
    for j, line in enumerate(text.splitlines()):
        try:
            out.append(parse(line))
        except ValueError as exc:
            raise UsageError(f"{flag} {path} line {j + 1}: {exc}") from None
    if len(out) != rows:
        raise UsageError(f"{flag} {path}: has {len(out)} lines for {rows} rows; give {what}")
    return out


def _payload_line(line: str) -> Any:
    """One JSON Lines payload: an object, or None for an empty line or null."""
    return None if line.strip() in ("", "null") else json.loads(line)


def _ingest(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    path = Path(args.file)
    X = _npy(args.file, "FILE")
    if X.ndim != 2:
        raise UsageError(f"FILE {path}: must hold a 2-D array (rows, dim), not shape {X.shape}; reshape it, "
                         "e.g. X.reshape(1, -1) for one row")
    _logits(X, args.file, "FILE")
    ids = _per_row(args.ids, X.shape[0], int if args.id_type == "int" else str,
                   "one id per line (line i names row i)", "--ids") if args.ids else None
    payloads = _per_row(args.payloads, X.shape[0], _payload_line, "one JSON object (or null) per line, line i for "
                        "row i", "--payloads") if args.payloads else None
    metrics = _list(args.metrics, "--metrics", _metric_name, "euc tri")
    temperatures = _list(args.temperatures, "--temperatures", float, "1 10")
    with _client(args) as client:
        existing = next((c for c in client.collections() if c["name"] == args.name), None)
        if existing is None and not args.create:
            raise UsageError(f"collection {args.name!r} does not exist; add --create to make it (dim "
                             f"{X.shape[1]} from {path})")
        if existing is not None and int(existing["dim"]) != X.shape[1]:
            raise UsageError(f"FILE {path}: rows have {X.shape[1]} numbers but collection {args.name!r} has dim "
                             f"{existing['dim']}; ingest {existing['dim']}-number rows or use another collection")
        if args.create:
            client.create_collection(args.name, int(X.shape[1]), metrics=metrics, temperatures=temperatures,
                                     kind=args.kind)
        started = time.perf_counter()
        with tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=f"ingest {args.name}",
                  disable=args.quiet, file=sys.stderr) as bar:
            result = client.upload_npy(args.name, path, ids=ids, start=args.start, wait=not args.no_wait,
                                       progress=bar.update, payloads=payloads)
        seconds = time.perf_counter() - started
    rate = result["count"] / seconds if seconds > 0 else float("inf")
    print(f"ingested {result['count']:,} points into {args.name!r} in {seconds:.2f} s ({rate:,.0f} points/s); "
          f"operation {result['operation_id']}: {result['status']}")
    return 0


def _search(args: argparse.Namespace) -> int:
    with _client(args) as client:
        vector = _query_vector(args, client) if args.vector_file else None
        hits = client.search(args.name, vector, id=None if args.id is None else _point_id(args.id, args.id_type),
                             k=args.k, metric=args.metric, temperature=args.temperature, kind=args.kind,
                             exact=args.exact, with_payload=True, filter=args.filter)
    if args.json:  # the server's answer as it came
        print(json.dumps(hits.raw, indent=2))
        return 0
    t = "" if hits.temperature is None else f" at t = {hits.temperature:g}"
    print(f"{hits.metric}{t}: {hits.formula}")
    print(f"index {hits.index}, {hits.how}, {hits.took_ms:.2f} ms; distances: {hits.units}, smaller is nearer\n")
    rows = []
    for rank, (pid, d, payload) in enumerate(zip(hits.ids, hits.distances.tolist(), hits.payloads or []), 1):
        text = "" if payload is None else json.dumps(payload, ensure_ascii=False)
        rows.append([rank, pid, f"{d:.6g}", text[:60] + ("…" if len(text) > 60 else "")])
    print(_table(["rank", "id", "distance", "payload"], rows))
    return 0


def _collections(args: argparse.Namespace) -> int:
    with _client(args) as client:
        found = client.collections()
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    if not found:
        print("no collections (create one with `logitsearch ingest NAME file.npy --create`)")
        return 0
    rows = []
    for c in found:
        ready = sum(i["status"] == "ready" for i in c["indexes"])
        building = [f"{i['id']} {100 * i['progress']:.0f}%" for i in c["indexes"] if i["status"] == "building"]
        rows.append([c["name"], c["dim"], c["count"], ",".join(c["metrics"]),
                     ",".join(f"{t:g}" for t in c["temperatures"]) or "-", c["index"]["kind"],
                     f"{ready}/{len(c['indexes'])}" + (f" (building {', '.join(building)})" if building else ""),
                     c["status"]])
    print(_table(["name", "dim", "points", "metrics", "temperatures", "kind", "indexes ready", "status"], rows))
    return 0


def _rho_cell(r: dict[str, Any] | None) -> str:
    return "n/a" if r is None or r.get("value") is None else f"{r['value']:.4f}"


def _summary_cell(s: dict[str, Any] | None, wide: bool = True) -> str:
    if s is None or s.get("mean") is None:
        return "n/a"
    return f"{s['mean']:.4f} ±{s['std']:.4f}" + (f" (min {s['min']:.4f})" if wide else "")


def _yes_no(v: bool | None) -> str:
    return "-" if v is None else ("yes" if v else "no")


def _evaluation_report(result: dict[str, Any], url: str = "") -> str:
    """The table the `evaluate` command prints: rho per metric (rows) and temperature (columns)."""
    per_t = result["summary"] if result.get("summary") is not None else result["results"]
    many = result.get("summary") is not None
    heads = ["metric"] + [f"t={r['temperature']:g}" for r in per_t]
    rows: list[list[Any]] = []
    for m in result["metrics"]:
        rows.append([m] + [_summary_cell(r["rho"].get(m), len(per_t) <= 4) if many else _rho_cell(r["rho"].get(m))
                           for r in per_t])
    rows.append(["n compared" + (" (pairs)" if result["mode"] == "many_to_many" else "")] + [r["n"] for r in per_t])
    mr = [f"{r['query_roughness']:.3g}" if r.get("query_roughness") is not None else "-" for r in per_t]
    rows.append(["MR query" + (" (mean)" if many else "")] + mr)
    rows.append(["MR rows (mean)"] + [f"{r['mean_roughness']:.3g}" for r in per_t])
    rows.append(["best"] + [r["recommendation"]["best"] or "-" for r in per_t])
    rows.append(["indexed"] + [_yes_no(r["recommendation"].get("indexed")) for r in per_t])
    rows.append(["best eval-only"] + [r["recommendation"].get("evaluation_only") or "-" for r in per_t])
    rows.append(["tri exact"] + [_yes_no(r["recommendation"]["tri_exact"]) for r in per_t])
    rows.append(["euc > cos"] + [_yes_no(r["recommendation"]["euc_beats_cos"]) for r in per_t])
    labelled = [r for r in per_t if r.get("labels")]
    if labelled:
        k = next(iter(labelled[0]["labels"].values()))["k"]
        for m in INDEXABLE:
            rows.append([f"agree@{k} {m}"] + [_label_cell(r, m, "agreement") for r in per_t])
        for m in INDEXABLE:
            rows.append([f"MAP {m}"] + [_label_cell(r, m, "map") for r in per_t])
    sample = result["sample"]
    drawn = (f"a uniform sample of {sample['size']:,} of {sample['of']:,} points (seed {sample['seed']})"
             if sample["sampled"] else f"the whole collection ({sample['of']:,} points)")
    query = result["query"]
    if "ids" in query:
        what = f"{len(query['ids'])} random stored queries (mean ±std" + (", min over them)" if len(per_t) <= 4 else ")")
    elif "id" in query:
        what = f"query id {query['id']!r}"
    elif "vector" in query:
        what = "the query vector"
    else:
        what = "all pairs within the sample, the earlier row as CED's query"
    lines = [f"Spearman's rho against CED(q : p) over softmax(x/t), {result['mode']}, ranks {result['ranks']}",
             f"{what}; compared with {drawn}", "", _table(heads, rows), ""]
    lines += [r["recommendation"]["advice"] for r in per_t]
    if result.get("labels"):
        info = result["labels"]
        lines.append(f"label check: payload field {info['field']!r}, {info['labelled']:,} labelled points, "
                     f"{info['distinct']:,} labels; agree@{info['k']} = share of the {info['k']} nearest (exact "
                     "search) with the query's label, MAP = mean average precision")
    sweep = result.get("sweep")
    if sweep is not None:
        lines.append("")
        lines.append(sweep["advice"])
        if sweep.get("build"):
            b = sweep["build"]
            lines.append(f"not indexed yet; build it: curl -X {b['method']} {url}{b['path']} "
                         f"-H 'Content-Type: application/json' -d '{json.dumps(b['body'])}'")
    lines.append(f"\n{result['seconds']:.2f} s; tri exact means rho >= "
                 f"{per_t[0]['recommendation']['threshold']} (a stand-in for CED at that t); ties in rho go to the "
                 "cheaper searchable metric (euc, cos: one index for every t; before tri: one per t)")
    return "\n".join(lines)


def _label_cell(r: dict[str, Any], m: str, key: str) -> str:
    v = (r.get("labels") or {}).get(m, {}).get(key)
    return "n/a" if v is None else f"{v:.3f}"


def _plot_dir(text: str) -> Path:
    out = Path(text)
    if out.suffix.lower() == ".png":
        raise UsageError(f"--plot {out}: give a directory (sweep.png, roughness.png and shepard.png are written "
                         f"into it), e.g. --plot {out.with_suffix('') or 'plots'}")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--plot {out}: exists and is not a directory; give a directory for the PNGs")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--plot {out}: cannot create the directory ({exc.strerror or exc})") from None
    return out


def _evaluate(args: argparse.Namespace) -> int:
    temperatures = _list(args.temperatures, "-t", float, "1 10 100", auto=True)
    metrics = _list(args.metrics, "--metrics", _metric_name, "euc tri")
    pid = None if args.id is None else _point_id(args.id, args.id_type)
    out = _plot_dir(args.plot) if args.plot else None
    with _client(args) as client:
        vector = _query_vector(args, client) if args.vector_file else None
        common: dict[str, Any] = {"id": pid, "temperatures": temperatures, "metrics": metrics, "sample": args.sample,
                                  "seed": args.seed, "ranks": args.ranks, "queries": args.queries,
                                  "queries_seed": args.seed, "labels": args.labels, "k": args.k,
                                  "filter": args.filter}
        result = client.evaluate(args.name, vector, mode=args.mode, **common)
        written = []
        if out is not None:
            per_t = result["summary"] if result.get("summary") is not None else result["results"]
            ts = [r["temperature"] for r in per_t]
            if len(ts) > 1 and args.mode == "one_to_many":
                client.sweep_png(args.name, vector, **{**common, "temperatures": ts}, path=out / "sweep.png")
                written.append(f"wrote {out / 'sweep.png'}: rho against temperature"
                               + (" and the label check" if args.labels else ""))
            client.roughness_png(args.name, sample=args.sample, seed=args.seed, path=out / "roughness.png")
            written.append(f"wrote {out / 'roughness.png'}: mean roughness against temperature")
            query = pid if pid is not None or vector is not None else (result["query"].get("ids") or [None])[0]
            if query is not None or vector is not None:
                metric = args.metric or (result.get("sweep") or {}).get("metric") or per_t[-1]["recommendation"][
                    "best"] or "tri"
                client.shepard(args.name, vector, id=query if vector is None else None, metric=metric,
                               sample=args.sample, seed=args.seed, ranks=args.ranks, path=out / "shepard.png",
                               temperature=ts[0], temperatures=ts if len(ts) > 1 else None, filter=args.filter)
                written.append(f"wrote {out / 'shepard.png'}: Shepard diagram{'s' if len(ts) > 1 else ''} of CED vs "
                               f"{metric} for {'the query vector' if vector is not None else repr(query)}")
    print(json.dumps(result, indent=2) if args.json else _evaluation_report(result, args.url))
    for line in written:
        print(line)
    return 0


def _snapshot(args: argparse.Namespace) -> int:
    with _client(args) as client:
        info = client.create_snapshot(args.name)
        where = f"kept on the server as {info['name']}"
        if args.output:
            try:
                client.download_snapshot(args.name, info["name"], args.output)
            except OSError as exc:
                print(f"logitsearch: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
                return 2
            where = f"wrote {args.output} ({info['bytes']:,} bytes); also {where}"
    indexes = "indexes included" if info["indexes_included"] else f"indexes rebuilt on restore ({info['rebuild_reason']})"
    print(f"snapshot of {args.name!r}: {info['count']:,} points up to operation {info['last_operation_id']}, "
          f"{indexes}; {where}")
    return 0


def _restore(args: argparse.Namespace) -> int:
    try:
        size = Path(args.file).stat().st_size
    except OSError as exc:
        print(f"logitsearch: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    with _client(args) as client:
        info = client.restore_snapshot(args.name, args.file, shards=args.shards)
    shards = f", {info['shards']} shards" if info.get("shards", 1) > 1 else ""
    print(f"restored {info['count']:,} points into {args.name!r} from {args.file} ({size:,} bytes); "
          f"last operation {info['last_operation_id']}, status {info['status']}{shards}")
    return 0


def _report(args: argparse.Namespace) -> int:
    temperatures = _list(args.temperatures, "-t", float, "1 10 100", auto=True)
    out = Path(args.output)
    if out.is_dir():
        raise UsageError(f"-o {out}: is a directory; give a file name such as {out / 'report.html'}")
    if not out.parent.is_dir():
        raise UsageError(f"-o {out}: the directory {out.parent} does not exist; create it first")
    with _client(args) as client:
        page = client.report(args.name, labels=args.labels, queries=args.queries, temperatures=temperatures,
                             k=args.k, sample=args.sample, seed=args.seed)
    out.write_text(page, encoding="utf-8")
    print(f"wrote {out} ({len(page.encode()):,} bytes): open it in a browser (self-contained, works offline)")
    return 0


def _add_connection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=os.environ.get("LOGITSEARCH_URL", "http://127.0.0.1:6340"),
                   help="server address (LOGITSEARCH_URL, default http://127.0.0.1:6340)")
    p.add_argument("--api-key", default=os.environ.get("LOGITSEARCH_API_KEY"),
                   help="API key (LOGITSEARCH_API_KEY)")


def _filter(text: str) -> Any:
    """--filter: a JSON object, Qdrant's {must, should, must_not} (checked by the server)."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}); e.g. '{{\"must\": [{{\"key\": \"label\", "
                                         f"\"match\": {{\"value\": \"cat\"}}}}]}}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object {must, should, must_not}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="logitsearch", description="Similarity search over logits")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", help="address to bind (LOGITSEARCH_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (LOGITSEARCH_PORT, default 6340)")
    serve.add_argument("--data-dir", help="data directory (LOGITSEARCH_DATA_DIR, default ./logitsearch-data)")
    serve.add_argument("--log-level", help="debug, info, warning, error (LOGITSEARCH_LOG_LEVEL)")
    serve.add_argument("--allow-unauthenticated", action="store_true",
                       help="serve a non-loopback host with no API key (LOGITSEARCH_ALLOW_UNAUTHENTICATED)")
    serve.set_defaults(func=_serve)

    ingest = sub.add_parser("ingest", help="upload a .npy matrix into a collection (one streamed request)",
                            description="Upload FILE (a float32/float64 .npy of shape (rows, dim)) into collection "
                                        "NAME in one transaction, with a progress bar. Ids are line i of --ids, "
                                        "or --start + i.")
    ingest.add_argument("name", help="collection name")
    ingest.add_argument("file", help=".npy file, float32 or float64, shape (rows, dim)")
    ingest.add_argument("--ids", help="text file with one id per line (line i names row i)")
    ingest.add_argument("--id-type", choices=["str", "int"], default="str", help="how to read --ids (default str)")
    ingest.add_argument("--payloads", help="JSON Lines file, line i the payload of row i (an object, or null)")
    ingest.add_argument("--start", type=int, help="without --ids: ids are start, start+1, ... (default 0)")
    ingest.add_argument("--create", action="store_true", help="create the collection first (dim from the file); "
                                                             "fine if it exists with the same configuration")
    ingest.add_argument("--metrics", nargs="+", help="with --create: metrics to index, e.g. euc cos tri or "
                                                      "euc,cos,tri (default euc,cos,tri)")
    ingest.add_argument("--temperatures", nargs="+", help="with --create: temperatures for tri/ced, e.g. 1 10 or "
                                                           "1,10 (default 10)")
    ingest.add_argument("--kind", default="flat", choices=["flat", "hnsw", "ivf"], help="with --create: index kind")
    ingest.add_argument("--no-wait", action="store_true", help="return once committed, before indexing finishes")
    ingest.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_connection(ingest)
    ingest.set_defaults(func=_ingest)

    search = sub.add_parser("search", help="k nearest neighbours of a stored point or a vector",
                            description="Search collection NAME by a stored point (--id, left out of its own "
                                        "answer) or by a vector from a .npy file.")
    search.add_argument("name", help="collection name")
    which = search.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", help="a stored point id")
    which.add_argument("--vector-file", help=".npy with the query: shape (dim,) or (rows, dim) with --row")
    search.add_argument("--id-type", choices=["auto", "str", "int"], default="auto",
                        help="auto: digits without leading zeros are an integer id")
    search.add_argument("--row", type=int, default=0, help="row of --vector-file to use (default 0)")
    search.add_argument("-k", type=int, default=10, help="neighbours (default 10)")
    search.add_argument("--metric", choices=list(INDEXABLE),
                        help="default: the collection's first indexed metric")
    search.add_argument("-t", "--temperature", type=float, help="temperature of a tri/ced index")
    search.add_argument("--kind", choices=["flat", "hnsw", "ivf"], help="index kind to use")
    search.add_argument("--exact", action="store_true", help="exact answer even on hnsw/ivf")
    search.add_argument("--json", action="store_true", help="print the server's JSON answer instead of a table")
    search.add_argument("--filter", type=_filter, help="search only the points this payload filter matches "
                        "(JSON, e.g. '{\"must_not\": [{\"key\": \"photo\", \"match\": {\"value\": \"a.jpg\"}}]}')")
    _add_connection(search)
    search.set_defaults(func=_search)

    colls = sub.add_parser("collections", help="list collections", description="List collections with their "
                                                                               "size, metrics and index status.")
    colls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_connection(colls)
    colls.set_defaults(func=_collections)

    ev = sub.add_parser("evaluate", help="which metric keeps the network's cross-entropy order on this data",
                        description="Spearman's rho between CED(q : p) over softmax(x/t) and each metric (euc, cos "
                                    "over raw logits; tri, jsd, hellinger, kld over softmax), per temperature, for a "
                                    "stored point (--id), a vector (--vector-file), --queries N random stored "
                                    "points, or all pairs (--mode many_to_many); -t auto sweeps the temperatures, --labels adds the "
                                    "semantic check, --plot DIR writes the pictures.")
    ev.add_argument("name", help="collection name")
    ev_query = ev.add_mutually_exclusive_group()
    ev_query.add_argument("--id", help="a stored point as the query (left out of the compared set)")
    ev_query.add_argument("--vector-file", help=".npy with the query: shape (dim,) or (rows, dim) with --row")
    ev_query.add_argument("--queries", type=int, help="evaluate N random stored queries and summarise")
    ev.add_argument("--id-type", choices=["auto", "str", "int"], default="auto",
                    help="auto: digits without leading zeros are an integer id")
    ev.add_argument("--row", type=int, default=0, help="row of --vector-file to use (default 0)")
    ev.add_argument("-t", "--temperatures", nargs="+", default=["10"],
                    help="softmax temperatures, e.g. -t 1 10 100 or -t 1,10,100, or -t auto: ~8 from where the "
                         "mean roughness is 1e-1 to where it is 1e-6 (default 10)")
    ev.add_argument("--metrics", nargs="+", help="e.g. euc tri or euc,tri (default euc,cos,tri,jsd,hellinger,kld)")
    ev.add_argument("--labels", help="payload field with each point's label: adds label agreement@k and mean "
                                     "average precision of each searchable metric (needs --id or --queries)")
    ev.add_argument("-k", type=int, default=None, help="neighbours of the label check (default 10)")
    ev.add_argument("--sample", type=int, help="compare with a uniform sample of this many points "
                                               "(default: the whole collection up to 100,000)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the sample and of --queries")
    ev.add_argument("--mode", choices=["one_to_many", "many_to_many"], default="one_to_many")
    ev.add_argument("--ranks", choices=["average", "paper"], default="average",
                    help="paper: the tie-breaking of the paper's MATLAB code (inflates rho with ties)")
    ev.add_argument("--plot", metavar="DIR", help="write sweep.png (rho against t; with --labels the label check "
                    "too), roughness.png and shepard.png (a grid, one panel per temperature) into DIR")
    ev.add_argument("--metric", choices=["euc", "cos", "tri", "jsd", "hellinger", "kld"],
                    help="the metric of the Shepard diagrams (default: the recommended one)")
    ev.add_argument("--json", action="store_true", help="print the JSON answer instead of a table")
    ev.add_argument("--filter", type=_filter, help="evaluate on the points this payload filter matches (JSON)")
    _add_connection(ev)
    ev.set_defaults(func=_evaluate)

    snap = sub.add_parser("snapshot", help="take a consistent snapshot of a collection (and download it)",
                          description="Take a point-in-time snapshot of collection NAME on the server (a tar "
                                      "archive with a checksummed manifest, the points and the indexes, each "
                                      "shard's part for a sharded collection; writes may continue meanwhile) "
                                      "and, with -o, download it to FILE.")
    snap.add_argument("name", help="collection name")
    snap.add_argument("-o", "--output", help="write the archive here (it is also kept on the server)")
    _add_connection(snap)
    snap.set_defaults(func=_snapshot)

    restore = sub.add_parser("restore", help="restore a snapshot archive into a new or empty collection",
                             description="Upload FILE (an archive from `logitsearch snapshot`) and restore it as "
                                         "collection NAME, which must not exist or be empty. The archive is "
                                         "checked whole first; a damaged one is refused and nothing is written.")
    restore.add_argument("name", help="collection to create")
    restore.add_argument("file", help="the snapshot archive (.tar)")
    restore.add_argument("--shards", type=int, help="shards of the restored collection (default: the archive's "
                                                    "own; more than 1 needs a server on Ray); points are "
                                                    "re-routed by id when it differs")
    _add_connection(restore)
    restore.set_defaults(func=_restore)

    rep = sub.add_parser("report", help="the evaluation as one self-contained HTML page",
                         description="Write the report of collection NAME (GET /v1/collections/NAME/report): the "
                                     "recommendation in words, rho against temperature over the auto sweep, the "
                                     "tables, the roughness curve and Shepard diagrams; figures inline, no external "
                                     "assets.")
    rep.add_argument("name", help="collection name")
    rep.add_argument("-o", "--output", default="report.html", help="file to write (default report.html)")
    rep.add_argument("--labels", help="payload field with each point's label: adds the semantic check")
    rep.add_argument("--queries", type=int, help="random stored queries (default 20)")
    rep.add_argument("-t", "--temperatures", nargs="+", default=["auto"], help="auto (default), or e.g. 1 10 100")
    rep.add_argument("-k", type=int, default=None, help="neighbours of the label check (default 10)")
    rep.add_argument("--sample", type=int, help="points compared (default: the whole collection up to 100,000)")
    rep.add_argument("--seed", type=int, default=0)
    _add_connection(rep)
    rep.set_defaults(func=_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return int(args.func(args))
    if getattr(args, "vector_file", None) is not None and args.row < 0:
        print(f"logitsearch: --row {args.row}: give a row number >= 0", file=sys.stderr)
        return 2
    import httpx

    from service.client import ApiError

    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"logitsearch: {exc}", file=sys.stderr)
        return 2
    except ApiError as exc:
        print(f"logitsearch: {exc}", file=sys.stderr)
        for e in exc.errors:
            print(f"  {e.get('field')}: {e.get('reason')}", file=sys.stderr)
        return 1
    except httpx.TransportError as exc:
        print(f"logitsearch: cannot reach {args.url} ({type(exc).__name__}); is `logitsearch serve` running?",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
