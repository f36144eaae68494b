"""The `logitsearch` command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from core.errors import InvalidInput


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.settings import load_settings

    try:
        settings = load_settings({"host": args.host, "port": args.port, "data_dir": args.data_dir,
                                  "log_level": args.log_level})
    except InvalidInput as exc:
        print(f"logitsearch: {exc}", file=sys.stderr)
        return 2
    print("logitsearch configuration: " + json.dumps(settings.redacted(), sort_keys=True), flush=True)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level=settings.log_level, timeout_graceful_shutdown=10)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="logitsearch", description="Similarity search over logits")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", help="address to bind (LOGITSEARCH_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (LOGITSEARCH_PORT, default 6340)")
    serve.add_argument("--data-dir", help="data directory (LOGITSEARCH_DATA_DIR, default ./logitsearch-data)")
    serve.add_argument("--log-level", help="debug, info, warning, error (LOGITSEARCH_LOG_LEVEL)")
    serve.set_defaults(func=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
