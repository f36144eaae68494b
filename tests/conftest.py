"""Shared fixtures: a seeded rng, hypothesis profiles, and the real data in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

from tests.browser import browser  # noqa: F401  (the headless Chromium fixture)

settings.register_profile("ci", derandomize=True, deadline=None, database=None, max_examples=60)
settings.register_profile("deep", deadline=None, max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LOGITSEARCH_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240529)


def _load_shared(name: str) -> tuple[np.ndarray, list[str]]:
    npy, txt = SHARED_DATA / f"{name}.npy", SHARED_DATA / f"{name}.txt"
    if not npy.exists() or not txt.exists():
        pytest.skip(f"real data {name} not present under {SHARED_DATA}")
    return np.load(npy, mmap_mode="r"), txt.read_text().split()


@pytest.fixture(scope="session")
def imagenet() -> tuple[np.ndarray, list[str]]:
    """EfficientNet-Lite0 ImageNet logits (9,900 x 1000) and their ids; skips when absent."""
    return _load_shared("imagenet_effnet_dev")


@pytest.fixture(scope="session")
def minilm() -> tuple[np.ndarray, list[str]]:
    """all-MiniLM-L6-v2 sentence embeddings (10,000 x 384) and their ids; skips when absent."""
    return _load_shared("minilm_debian_dev")
