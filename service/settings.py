"""Settings: CLI flags > LOGITSEARCH_* environment > defaults. Built once, frozen, printed at start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from core.errors import InvalidInput

#: environment variable -> (field, meaning); the README's configuration table is checked against it
ENV: dict[str, tuple[str, str]] = {
    "LOGITSEARCH_DATA_DIR": ("data_dir", "directory for the SQLite database and index snapshots"),
    "LOGITSEARCH_HOST": ("host", "address to bind"),
    "LOGITSEARCH_PORT": ("port", "port to listen on"),
    "LOGITSEARCH_LOG_LEVEL": ("log_level", "debug, info, warning or error"),
    "LOGITSEARCH_API_KEY": ("api_key", "read-write API key (unset: no auth, bind 127.0.0.1 only)"),
    "LOGITSEARCH_READ_API_KEY": ("read_api_key", "read-only API key"),
    "LOGITSEARCH_ALLOW_UNAUTHENTICATED": ("allow_unauthenticated",
                                          "1: serve a non-loopback host with no API key (unsafe)"),
    "LOGITSEARCH_MAX_BODY_BYTES": ("max_body_bytes", "largest request body accepted"),
    "LOGITSEARCH_MAX_JSON_BYTES": ("max_json_bytes",
                                   "largest JSON request body (parsed whole; .npy bodies are streamed)"),
    "LOGITSEARCH_MAX_BATCH": ("max_batch", "most points in one upsert / get / delete"),
    "LOGITSEARCH_MAX_K": ("max_k", "largest k in a search"),
    "LOGITSEARCH_MAX_EVAL_SAMPLE": ("max_eval_sample", "most points one evaluation compares"),
    "LOGITSEARCH_SNAPSHOT_EVERY": ("snapshot_every", "writes between index snapshots"),
    "LOGITSEARCH_DRAIN_SECONDS": ("drain_seconds", "at stop, seconds open requests get to finish before a 503"),
    "LOGITSEARCH_WARMUP_SECONDS": ("warmup_seconds",
                                   "at start, seconds the kernel warm-up may hold /readyz at 503 (0: no warm-up)"),
    "LOGITSEARCH_RAY_ADDRESS": ("ray_address", ("unset: no Ray (one process); `local`: a local Ray on 127.0.0.1; "
                                                "else a Ray cluster's address: collections may then have `shards`")),
    "LOGITSEARCH_RAY_SHARD_CPUS": ("ray_shard_cpus", ("CPUs Ray reserves for each shard actor (its numba and "
                                                      "OpenMP threads: this rounded up)")),
    "LOGITSEARCH_DEFAULT_SHARDS": ("default_shards", ("shards a collection gets when its create request names "
                                                      "none (1: one in-process shard; more need Ray)")),
}


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("./logitsearch-data")
    host: str = "127.0.0.1"
    port: int = 6340
    log_level: str = "info"
    api_key: str | None = None
    read_api_key: str | None = None
    allow_unauthenticated: bool = False
    max_body_bytes: int = 2 * 1024**3
    # a JSON body becomes ~3x its size in Python objects while parsed; 64 MiB ~ 40k rows x 384 as vectors_b64
    max_json_bytes: int = 64 * 1024**2
    max_batch: int = 100_000
    max_k: int = 10_000
    max_eval_sample: int = 1_000_000
    snapshot_every: int = 50_000
    # docker stop allows 10 s before SIGKILL: 5 s of drain leaves 5 s for the snapshot (issue 11)
    drain_seconds: int = 5
    # a fresh install compiles every numba kernel (~20-60 s on 2 cores); a restart loads them (~2-5 s)
    warmup_seconds: int = 120
    # issue 13: sharded collections, each shard a Ray actor (service/ray_shards.py)
    ray_address: str | None = None
    ray_shard_cpus: float = 1.0
    default_shards: int = 1

    def redacted(self) -> dict[str, Any]:
        """The effective configuration with keys hidden, as printed at start."""
        out = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
        for key in ("api_key", "read_api_key"):
            out[key] = "(set)" if out[key] else "(unset)"
        return out


def _coerce(name: str, raw: Any, default: Any) -> Any:
    if raw is None or raw == "":
        return None if default is None else default
    try:
        if isinstance(default, bool):
            return str(raw).lower() in ("1", "true", "yes", "on")
        if isinstance(default, float):
            fvalue = float(raw)
            if not (0 < fvalue < 1e6):
                raise ValueError
            return fvalue
        if isinstance(default, int):
            value = int(raw)
            if value < 0 or (value == 0 and name not in ("port", "warmup_seconds")):
                raise ValueError
            if name == "port" and not (0 <= value <= 65535):
                raise ValueError
            return value
        if isinstance(default, Path):
            return Path(raw)
    except (TypeError, ValueError):
        raise InvalidInput(name, f"invalid value {raw!r}") from None
    return str(raw)


def load_settings(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from `overrides` (CLI flags; None values ignored), then the environment, then defaults."""
    env = os.environ if environ is None else environ
    base = Settings()
    values: dict[str, Any] = {}
    for var, (name, _) in ENV.items():
        if var in env and env[var] != "":
            values[name] = env[var]
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
    known = {f.name: getattr(base, f.name) for f in fields(Settings)}
    unknown = set(values) - set(known)
    if unknown:
        raise InvalidInput(min(unknown), "unknown setting")
    coerced = {k: _coerce(k, v, known[k]) for k, v in values.items()}
    if coerced.get("log_level", "info") not in ("debug", "info", "warning", "error", "critical"):
        raise InvalidInput("log_level", f"must be debug, info, warning or error, got {coerced['log_level']!r}")
    settings = replace(base, **coerced)
    if settings.default_shards > 1 and not settings.ray_address:
        raise InvalidInput("default_shards", f"{settings.default_shards} shards need Ray: set "
                                             "LOGITSEARCH_RAY_ADDRESS (`local`, or a Ray cluster's address)")
    if settings.default_shards > 256:
        raise InvalidInput("default_shards", f"at most 256, got {settings.default_shards}")
    return settings
