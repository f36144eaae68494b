"""What the ops tests read from the repository: the README's commands, the Dockerfile, the compose file.

Nothing here is copied from those files: each value is extracted, so the tests follow the files.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
ENV_EXAMPLE = REPO / ".env.example"
COMPOSE_SCHEMA = REPO / "tests" / "data" / "compose-spec.json"
SERVICE = "logitsearch"


def fenced_blocks_after(marker: str, text: str) -> list[str]:
    """The body of each ```bash block that follows an HTML comment `<!-- marker -->` (blank lines allowed)."""
    pattern = re.compile(r"<!--\s*" + re.escape(marker) + r"\s*-->\s*\n```(?:bash|sh|console)?\n(.*?)\n```",
                         re.DOTALL)
    return pattern.findall(text)


def readme_command(marker: str) -> str:
    blocks = fenced_blocks_after(marker, README.read_text())
    if len(blocks) != 1:
        raise AssertionError(f"README.md must have exactly one block after <!-- {marker} -->, found {len(blocks)}")
    return blocks[0].strip()


def readme_install_and_entry_point() -> tuple[str, list[str]]:
    """From the README's run command `... && pip install . && logitsearch serve`: the install step and the
    entry point (argv) it ends with."""
    steps = [s.strip() for s in readme_command("run-command").split("&&")]
    installs = [s for s in steps if s.startswith("pip install")]
    if len(installs) != 1:
        raise AssertionError(f"the README's run command has {len(installs)} pip install steps: {steps}")
    return installs[0], shlex.split(steps[-1])


@dataclass(frozen=True)
class Image:
    """The final stage of the Dockerfile as dockerfile-parse sees it."""

    parser: DockerfileParser

    @property
    def stages(self) -> list[list[dict[str, Any]]]:
        stages: list[list[dict[str, Any]]] = []
        for item in self.parser.structure:
            if item["instruction"] == "FROM":
                stages.append([])
            if stages:
                stages[-1].append(item)
        return stages

    def final(self, instruction: str) -> list[str]:
        return [i["value"] for i in self.stages[-1] if i["instruction"] == instruction]

    def builder(self, instruction: str) -> list[str]:
        return [i["value"] for s in self.stages[:-1] for i in s if i["instruction"] == instruction]

    @property
    def env(self) -> dict[str, str]:
        return dict(self.parser.envs)

    @property
    def cmd(self) -> list[str]:
        return list(_exec_form(self.final("CMD")[-1]))

    @property
    def healthcheck(self) -> tuple[dict[str, str], list[str]]:
        """(options, exec-form argv) of the final stage's HEALTHCHECK."""
        value = self.final("HEALTHCHECK")[-1]
        options_text, sep, command = value.partition("CMD")
        if not sep:
            raise AssertionError(f"HEALTHCHECK without CMD: {value!r}")
        options = dict(re.findall(r"--([a-z-]+)=(\S+)", options_text))
        return options, list(_exec_form(command.strip()))


def _exec_form(value: str) -> list[str]:
    argv = json.loads(value)
    if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)):
        raise AssertionError(f"not an exec-form (JSON array) command: {value!r}")
    return argv


def image() -> Image:
    return Image(DockerfileParser(path=str(DOCKERFILE), cache_content=True))


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def duration_seconds(duration: str) -> float:
    """A compose duration such as '1m30s' in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a compose duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def env_file_vars(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            if not sep:
                raise AssertionError(f"{path.name}: not KEY=VALUE: {line!r}")
            out[key.strip()] = value.strip()
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def container_env(data_dir: Path, port: int, scratch: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The image's ENV, made to run here: the venv of this interpreter stands in for /opt/venv, paths
    inside the container become temporary ones, and the server binds 127.0.0.1 on a free port.

    NUMBA_CACHE_DIR is left to this machine (the cache beside the installed package) so the test does
    not recompile every kernel; the image fills its own cache, /opt/numba-cache, at build time (issue 16).
    """
    env = {k: v for k, v in image().env.items() if k not in ("PATH", "NUMBA_CACHE_DIR")}
    venv_bin = image().env["PATH"].split(":")[0]
    assert venv_bin.endswith("/bin"), venv_bin
    env.update(
        PATH=f"{sysconfig.get_path('scripts')}{os.pathsep}{os.environ.get('PATH', '')}",
        MPLCONFIGDIR=str(scratch / "matplotlib"),
        LOGITSEARCH_DATA_DIR=str(data_dir),
        LOGITSEARCH_HOST="127.0.0.1",
        LOGITSEARCH_PORT=str(port),
    )
    env.update(extra or {})
    base = {k: v for k, v in os.environ.items() if not k.startswith("LOGITSEARCH_")}
    return {**base, **env}


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    env: dict[str, str]
    log: Path

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def serving(argv: list[str], env: dict[str, str], log: Path, timeout: float = 60) -> Iterator[Server]:
    """Run `argv` (the container's CMD) with `env` until /healthz answers; stop it on the way out."""
    url = f"http://127.0.0.1:{env['LOGITSEARCH_PORT']}"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)
    server = Server(proc, url, env, log)
    try:
        deadline = time.monotonic() + timeout
        while not healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not start (exit {proc.poll()}):\n{server.logs()[-3000:]}")
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def config_table() -> str:
    """The README's configuration table, generated from service.settings.ENV and the Settings defaults."""
    from dataclasses import fields

    from service.settings import ENV, Settings

    defaults = {f.name: getattr(Settings(), f.name) for f in fields(Settings)}
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for var, (name, meaning) in ENV.items():
        default = defaults[name]
        shown = "(unset)" if default is None else f"`{default}`"
        rows.append(f"| `{var}` | {shown} | {meaning} |")
    return "\n".join(rows)


def readme_table_after(marker: str, text: str) -> list[list[str]]:
    """Rows (cells stripped of backticks) of the markdown table following `<!-- marker -->`."""
    match = re.search(r"<!--\s*" + re.escape(marker) + r"\s*-->\s*\n((?:\|.*\|\s*\n?)+)", text)
    if match is None:
        raise AssertionError(f"README.md has no table after <!-- {marker} -->")
    rows = [[c.strip().strip("`") for c in line.strip().strip("|").split("|")]
            for line in match.group(1).strip().splitlines()]
    return [r for r in rows[1:] if not all(set(c) <= set("-: ") for c in r)]


if __name__ == "__main__":
    print(config_table())
