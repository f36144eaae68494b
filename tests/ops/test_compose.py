"""docker-compose.yml: valid Compose Specification, and consistent with the image and the app's settings."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path, PurePosixPath

import jsonschema
import numpy as np
import pytest

from core.errors import InvalidInput
from service.auth import check_binding
from service.cli import build_parser
from service.settings import ENV, load_settings
from tests.ops.deploy import (
    COMPOSE_SCHEMA,
    ENV_EXAMPLE,
    REPO,
    SERVICE,
    compose,
    duration_seconds,
    env_file_vars,
    image,
)

_INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?)([-?])([^}]*))?\}")


def _validator() -> jsonschema.Draft7Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _interpolate(value: str, dotenv: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error} against `dotenv`."""

    def one(m: re.Match[str]) -> str:
        name, colon, op, arg = m.groups()
        present = name in dotenv and (dotenv[name] != "" or not colon)
        if present:
            return dotenv[name]
        if op == "?":
            raise LookupError(f"{name}: {arg}")
        return arg or ""

    return _INTERPOLATION.sub(one, value)


def _environment(service: dict, dotenv: dict[str, str]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: _interpolate(str(v), dotenv) for k, v in env.items()}


def _after_cp_env_example(service: dict) -> dict[str, str]:
    """The service's environment once a newcomer ran `cp .env.example .env` (env_file, then environment)."""
    dotenv = env_file_vars(ENV_EXAMPLE)
    return {**dotenv, **_environment(service, dotenv)}


def test_compose_file_is_valid_against_the_compose_specification_schema():
    errors = sorted(_validator().iter_errors(compose()), key=lambda e: list(e.path))
    assert [f"{list(e.path)}: {e.message}" for e in errors] == []


@pytest.mark.parametrize("breakage", ["unknown service key", "ports not a list", "bad depends_on condition"])
def test_the_schema_rejects_a_broken_copy_of_our_compose_file(breakage):
    doc = copy.deepcopy(compose())
    service = doc["services"][SERVICE]
    if breakage == "unknown service key":
        service["restart_policy"] = "always"
    elif breakage == "ports not a list":
        service["ports"] = {"6340": 6340}
    else:
        doc["services"]["seed"]["depends_on"][SERVICE]["condition"] = "service_ready"
    assert not _validator().is_valid(doc)


def test_service_builds_this_repo_and_publishes_the_port_the_image_exposes():
    service = compose()["services"][SERVICE]
    assert service["build"] in (".", {"context": "."})
    exposed = {int(p.split("/")[0]) for p in image().final("EXPOSE")[-1].split()}
    published = {tuple(int(x) for x in str(p).split(":")[-2:]) for p in service["ports"]}
    assert published == {(port, port) for port in exposed}
    assert load_settings(environ=image().env).port in exposed


def test_data_lives_in_a_named_volume_mounted_where_the_image_declares_its_volume_and_data_dir():
    doc = compose()
    service = doc["services"][SERVICE]
    declared = json.loads(image().final("VOLUME")[-1])
    mounts = [str(v).split(":") for v in service["volumes"]]
    named = [(src, dst) for src, dst, *_ in mounts if src in (doc.get("volumes") or {})]
    assert [dst for _, dst in named] == declared
    data_dir = load_settings(environ=_after_cp_env_example(service)).data_dir
    assert PurePosixPath(str(data_dir)) == PurePosixPath(declared[0])
    assert image().env["LOGITSEARCH_DATA_DIR"] == declared[0]


def test_service_restarts_and_its_healthcheck_is_the_images():
    service = compose()["services"][SERVICE]
    assert service["restart"] == "unless-stopped"
    options, argv = image().healthcheck
    check = service["healthcheck"]
    assert check["test"] == ["CMD", *argv]
    for key in ("interval", "timeout", "start_period", "retries"):
        assert str(check[key]) == options[key.replace("_", "-")], key
    # Docker's SIGKILL must come after uvicorn's graceful drain (10 s in `logitsearch serve`) and the snapshot.
    assert service.get("stop_signal", "SIGTERM") == image().final("STOPSIGNAL")[-1] == "SIGTERM"
    assert duration_seconds(service["stop_grace_period"]) >= 30


def test_every_logitsearch_variable_in_compose_and_env_example_is_one_the_app_reads():
    doc = compose()
    used = {k for s in doc["services"].values() for k in s.get("environment", {})} | set(env_file_vars(ENV_EXAMPLE))
    used |= {m.group(1) for m in _INTERPOLATION.finditer((REPO / "docker-compose.yml").read_text())}
    ours = {k for k in used if k.startswith("LOGITSEARCH_")}
    assert ours and ours <= set(ENV), sorted(ours - set(ENV))


def test_after_cp_env_example_the_settings_bind_all_interfaces_with_a_key():
    service = compose()["services"][SERVICE]
    settings = load_settings(environ=_after_cp_env_example(service))
    assert settings.host == "0.0.0.0" and settings.api_key and settings.log_level == "info"
    assert "API keys configured" in check_binding(settings)


def test_without_an_env_file_compose_stops_at_the_missing_key_and_says_how_to_fix_it():
    service = compose()["services"][SERVICE]
    with pytest.raises(LookupError, match="LOGITSEARCH_API_KEY: .*cp .env.example .env"):
        _environment(service, dotenv={})


def test_the_image_alone_refuses_to_serve_all_interfaces_without_a_key():
    # `docker run` with no -e LOGITSEARCH_API_KEY: exit at start with the reason, never an open port.
    with pytest.raises(InvalidInput, match="LOGITSEARCH_API_KEY"):
        check_binding(load_settings(environ=image().env))


def test_api_keys_come_from_an_optional_env_file_that_git_ignores():
    doc = compose()
    for name in (SERVICE, "seed"):
        assert doc["services"][name]["env_file"] == [{"path": ".env", "required": False}], name
    assert "LOGITSEARCH_API_KEY" in env_file_vars(ENV_EXAMPLE)
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()


def test_seed_service_is_a_one_shot_profile_that_waits_for_a_healthy_service():
    seed = compose()["services"]["seed"]
    assert seed["profiles"] == ["seed"]
    assert seed["depends_on"] == {SERVICE: {"condition": "service_healthy"}}
    assert seed["restart"] == "no"
    assert seed["image"] == compose()["services"][SERVICE]["image"]


def test_seed_command_is_one_the_cli_accepts_and_its_files_are_in_the_repository():
    seed = compose()["services"]["seed"]
    argv = [str(a) for a in seed["command"]]
    assert argv[:2] == ["logitsearch", "ingest"]
    args = build_parser().parse_args(argv[1:])
    assert args.create and args.ids
    assert args.url == f"http://{SERVICE}:{load_settings(environ=image().env).port}"
    mounts = {dst: src for src, dst, *_ in (str(v).split(":") for v in seed["volumes"])}

    def on_host(path: str) -> Path:
        directory, _, filename = path.rpartition("/")
        return REPO / mounts[directory] / filename

    X = np.load(on_host(args.file), allow_pickle=False)
    ids = on_host(args.ids).read_text().splitlines()
    assert X.ndim == 2 and X.dtype == np.float32 and len(ids) == len(set(ids)) == X.shape[0]
    assert on_host(args.file).stat().st_size <= 1 << 20  # small enough to commit
