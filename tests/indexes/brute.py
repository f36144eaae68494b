"""Float64 brute-force oracles written from the paper's formulas, and a k-NN comparison with ties."""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax, softmax


def brute(metric: str, q: np.ndarray, X: np.ndarray, t: float | None = None) -> np.ndarray:
    """metric(q, row) for every row of X, float64, straight from the formulas (eqs. 2, 5, 6)."""
    q = np.asarray(q, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    if metric == "euc":
        return ((X - q) ** 2).sum(axis=1)
    if metric == "cos":
        nq, nx = np.linalg.norm(q), np.linalg.norm(X, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            c = X @ q / (nq * nx)
        return np.where((nq > 0) & (nx > 0), 1.0 - np.clip(c, -1, 1), 1.0)
    pq = softmax(q / t)
    if metric == "tri":
        P = softmax(X / t, axis=1)
        s = P + pq
        return 0.5 * np.divide((P - pq) ** 2, s, out=np.zeros_like(s), where=s > 0).sum(axis=1)
    if metric == "ced":
        return -(pq * log_softmax(X / t, axis=1)).sum(axis=1)
    raise ValueError(metric)


def assert_knn(hits, metric: str, q: np.ndarray, ids: np.ndarray, X: np.ndarray, k: int,
               t: float | None = None, rtol: float = 1e-6, exclude: int | None = None) -> None:
    """hits equal brute force: the same sorted distances, and every id carries its true distance.

    Together these allow only swaps among rows at equal distance (ties).
    """
    d = brute(metric, q, X, t)
    if exclude is not None:
        d = np.where(ids == exclude, np.inf, d)
    want = np.sort(d)[: min(k, int(np.isfinite(d).sum()))]
    got_d = np.asarray(hits.distances)
    assert len(hits.ids) == len(want), (len(hits.ids), len(want))
    assert len(set(hits.ids.tolist())) == len(hits.ids)
    scale = np.maximum(np.abs(want), 1e-300)
    np.testing.assert_allclose(got_d, want, rtol=rtol, atol=float(rtol * scale.max() * 1e-6))
    pos = {int(i): r for r, i in enumerate(ids)}
    true_of_got = d[[pos[int(i)] for i in hits.ids]]
    np.testing.assert_allclose(true_of_got, got_d, rtol=rtol, atol=float(rtol * scale.max() * 1e-6))


def recall(got: list, want: list) -> float:
    return float(np.mean([len(set(g.ids.tolist()) & set(w.ids.tolist())) / max(len(w.ids), 1)
                          for g, w in zip(got, want)]))
