"""The image's numba cache (issue 16): compiled at build time into a directory of the image, not /tmp,
by a build step that runs the warm-up as the service user; that step, run here, fills an empty cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import PurePosixPath

from tests.ops.deploy import REPO, image

WARMUP = ["python", "-m", "service.warmup"]


def _runs() -> list[str]:
    return image().final("RUN")


def test_issue_16_numba_cache_dir_is_a_path_of_the_image_not_tmp():
    cache = PurePosixPath(image().env["NUMBA_CACHE_DIR"])
    assert cache.is_absolute() and cache.parts[1] not in ("tmp", "var", "data"), cache
    # the volume would hide it, and /tmp is the place a container is free to lose
    assert not str(cache).startswith(image().env["LOGITSEARCH_DATA_DIR"])


def test_issue_16_a_final_stage_build_step_runs_the_warmup_as_the_service_user_after_the_venv_is_in():
    stage = image().stages[-1]
    steps = [(i["instruction"], i["value"]) for i in stage]
    warm = [n for n, (ins, value) in enumerate(steps) if ins == "RUN" and value.strip().startswith("[")
            and json.loads(value) == WARMUP]
    assert len(warm) == 1, steps
    before = steps[: warm[0]]
    copy = max(n for n, (ins, value) in enumerate(before) if ins == "COPY" and "/opt/venv" in value)
    user = max(n for n, (ins, _) in enumerate(before) if ins == "USER")
    assert copy < warm[0] and user < warm[0]
    uid = before[user][1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0
    assert all(value.split(":")[0] == uid for ins, value in steps if ins == "USER")
    # numba uses a cache directory only where it may write (it tries a temporary file first)
    cache = image().env["NUMBA_CACHE_DIR"]
    made = [v for ins, v in before if ins == "RUN" and "mkdir" in v and "chown" in v]
    assert any(cache in v.split("mkdir", 1)[1] and cache in v.split("chown", 1)[1] for v in made), made


def test_issue_16_the_build_step_fills_an_empty_numba_cache(tmp_path):
    cache = tmp_path / "numba-cache"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO), "MPLCONFIGDIR": str(tmp_path / "mpl")}
    proc = subprocess.run([sys.executable, *WARMUP[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=280, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "warm-up: done" in proc.stdout
    index = {p.name.split("-")[0] for p in cache.rglob("*.nbi")}
    code = list(cache.rglob("*.nbc"))
    for kernel in ("exact._scan", "exact._scan_serial", "exact._pairs_impl", "exact._pairs_serial",
                   "exact.exp_inplace", "kernels.all_logit_rows"):
        assert kernel in index, sorted(index)
    assert len(code) >= len(index)
