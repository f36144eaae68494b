"""The README's journey, run as written against a real server; its configuration table against ENV.

Every ```bash block after a `<!-- journey -->` marker is run in order, in one scratch directory that
sees the repository's `examples/`, with the documented address replaced by the test server's.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from service.settings import ENV, Settings
from tests.ops.deploy import (
    README,
    REPO,
    config_table,
    container_env,
    fenced_blocks_after,
    free_port,
    image,
    readme_table_after,
    serving,
)

DOCUMENTED = re.compile(r"(?:127\.0\.0\.1|localhost):6340")
# Every curl in the journey must get a 2xx: a README step that "runs" but returns a problem is a lie.
_PRELUDE = 'curl() { command curl --silent --show-error --fail-with-body "$@"; }\n'


def _journey() -> list[str]:
    blocks = fenced_blocks_after("journey", README.read_text())
    assert blocks, "README.md has no ```bash block after a <!-- journey --> marker"
    return blocks


def test_readme_journey_blocks_run_in_order_against_a_real_server(tmp_path):
    blocks = _journey()
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(REPO / "examples", target_is_directory=True)
    port = free_port()
    env = container_env(tmp_path / "data", port, tmp_path,
                        extra={"LOGITSEARCH_HOST": "127.0.0.1", "LOGITSEARCH_URL": f"http://127.0.0.1:{port}"})
    # The journey runs the service as the README says (`logitsearch serve`), without Docker's settings.
    for var in ("LOGITSEARCH_API_KEY", "LOGITSEARCH_READ_API_KEY"):
        env.pop(var, None)
    with serving(["logitsearch", "serve"], env, tmp_path / "server.log"):
        for i, block in enumerate(blocks, 1):
            script = _PRELUDE + DOCUMENTED.sub(f"127.0.0.1:{port}", block)
            proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env,
                                  capture_output=True, text=True, timeout=120, check=False)
            assert proc.returncode == 0, f"journey block {i} failed:\n{block}\n--- output\n{proc.stdout}{proc.stderr}"
            assert "Traceback" not in proc.stdout + proc.stderr, block


def test_journey_runner_fails_a_block_whose_request_is_refused(tmp_path):
    port = free_port()  # nothing listens here
    script = _PRELUDE + DOCUMENTED.sub(f"127.0.0.1:{port}", "curl http://127.0.0.1:6340/healthz")
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=30, check=False)
    assert proc.returncode != 0


def test_readme_configuration_table_lists_every_variable_with_its_default():
    rows = readme_table_after("config-table", README.read_text())
    assert [r[0] for r in rows] == list(ENV)
    want = {r[0]: r[1] for r in readme_table_after("x", f"<!-- x -->\n{config_table()}\n")}
    assert {r[0]: r[1] for r in rows} == want


def test_generated_configuration_table_shows_the_settings_defaults():
    rows = {r[0]: r[1] for r in readme_table_after("x", f"<!-- x -->\n{config_table()}\n")}
    assert rows["LOGITSEARCH_PORT"] == str(Settings().port) == image().env["LOGITSEARCH_PORT"]
    assert rows["LOGITSEARCH_API_KEY"] == "(unset)"
    assert set(rows) == set(ENV)


@pytest.mark.parametrize("marker", ["run-command", "test-command"])
def test_readme_keeps_the_one_line_commands_ci_and_the_image_rely_on(marker):
    assert len(fenced_blocks_after(marker, README.read_text())) == 1
