"""The paper's findings on real logits (../shared/data; skipped when absent).

Section 4 / Figure 4: Spearman(CED, TRI) becomes essentially 1 from t ~ 10 on classifier logits.
Section 9 / Figures 8-9: EUC over raw logits keeps CED's order far better than COS does.
"""

from __future__ import annotations

import numpy as np
import pytest

from core.divergences import ced_logits, one_to_many, tri_logits
from core.ranks import SharedRanks, spearman
from core.roughness import mean_roughness, temperature_for_roughness

N_ROWS, N_QUERIES = 2000, 20


def _split(X: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """~2000 rows (a fair mix: the files are shuffled) and 20 random queries from the rest."""
    queries = N_ROWS + rng.choice(X.shape[0] - N_ROWS, size=N_QUERIES, replace=False)
    return np.array(X[:N_ROWS]), X[np.sort(queries)]  # read the memory map once


def _mean_rho(rows: np.ndarray, queries: np.ndarray, t: float, name: str) -> float:
    """Mean over the queries of Spearman(CED at t, metric `name`), CED ranked once per query."""
    rhos = []
    for xq in queries:
        ref = SharedRanks(ced_logits(xq, rows, t))
        rhos.append(ref.rho(one_to_many(name, xq, rows, t)).value)
    return float(np.mean(rhos))


def test_ced_and_tri_rank_alike_on_imagenet_logits_from_t_10(imagenet, rng):
    X, ids = imagenet
    assert X.shape == (len(ids), 1000)
    rows, queries = _split(X, rng)
    mean = {}
    for t in (1.0, 10.0, 100.0):
        mean[t] = float(np.mean([spearman(ced_logits(q, rows, t), tri_logits(q, rows, t)).value for q in queries]))
    assert mean[10.0] >= 0.99 and mean[100.0] >= 0.99
    assert mean[1.0] < mean[10.0] and mean[1.0] < mean[100.0]


@pytest.mark.parametrize(("data", "t"), [("imagenet", 10.0), ("minilm", 1.0)])
def test_euc_keeps_ceds_order_better_than_cos(request, rng, data, t):
    X, _ = request.getfixturevalue(data)
    rows, queries = _split(X, rng)
    euc, cos = _mean_rho(rows, queries, t, "euc"), _mean_rho(rows, queries, t, "cos")
    assert euc >= 0.99 and euc > cos + 0.3


def test_minilm_needs_a_hundredfold_smaller_temperature(minilm, rng):
    # the data README: these sentence embeddings are small, so TRI ~ CED already at t ~ 0.3-1
    X, _ = minilm
    rows, queries = _split(X, rng)
    assert _mean_rho(rows, queries, 0.3, "tri") >= 0.99
    assert _mean_rho(rows, queries, 0.03, "tri") < 0.9


def test_temperature_for_a_roughness_of_1e_6_on_real_logits(imagenet, minilm):
    for X in (imagenet[0][:300], minilm[0][:300]):
        got = temperature_for_roughness(X, 1e-6)
        assert got.reachable and 1.0 < got.t < 100.0
        assert mean_roughness(X, got.t * 1.01) < 1e-6 < mean_roughness(X, got.t / 1.01)
