"""Initialisation of the anchor k-means: k-means++ with d = 1 - IoU, and the seeds of the restarts."""

from __future__ import annotations

import numpy as np

from yolov2.anchors.assignment import MAX_K, Backend, _use_numba
from yolov2.anchors.shapes import validate_shapes
from yolov2.boxes import wh_iou_np
from yolov2.errors import ConfigError


def restart_seeds(seed: int, n_init: int) -> list[np.random.SeedSequence]:
    """One independent seed per restart, all derived from ``seed``."""
    if n_init < 1:
        raise ConfigError(f"n_init must be at least 1, got {n_init}")
    return np.random.SeedSequence(seed).spawn(n_init)


def kmeans_pp_init(wh: np.ndarray, k: int, rng: np.random.Generator, backend: Backend = "auto") -> np.ndarray:
    """k-means++ centroids (float64[k, 2]) with d = 1 - IoU, each next one drawn with P ∝ d².

    wh (float64[N, 2]) normalised shapes. Draws: ``rng.integers(N)`` for the first box, then per
    centroid one ``rng.random()`` scaled by the total of d² and located in its running sum
    (``np.cumsum``: the first index whose sum exceeds it). Raises :class:`ConfigError` when fewer
    than k distinct shapes exist. Both backends give the same centroids.
    """
    return _kmeans_pp_init(validate_shapes(wh), k, rng, backend)


def _kmeans_pp_init(wh: np.ndarray, k: int, rng: np.random.Generator, backend: Backend) -> np.ndarray:
    """:func:`kmeans_pp_init` on already validated shapes (Fortran-ordered float64[N, 2])."""
    _check_k(k)
    n = len(wh)
    numba = _use_numba(backend)
    if numba:
        from yolov2.anchors.kernels import pp_locate, pp_total, pp_update
    centroids = np.empty((k, 2), dtype=np.float64)
    centroids[0] = wh[int(rng.integers(n))]
    best = np.full(n, -1.0)  # best IoU of each box with the centroids so far
    for i in range(1, k):
        c = centroids[i - 1]
        if numba:
            pp_update(wh[:, 0], wh[:, 1], float(c[0]), float(c[1]), best)
            total = pp_total(best)
        else:
            np.maximum(best, wh_iou_np(wh, c[None, :])[:, 0], out=best)
            d = 1.0 - best
            cum = np.cumsum(d * d)
            total = cum[-1]
        if not total > 0:
            raise ConfigError(_too_few_shapes_message(wh, k))
        r = rng.random() * total
        if numba:
            chosen = pp_locate(best, r)
        else:
            chosen = min(int(np.searchsorted(cum, r, side="right")), n - 1)
        centroids[i] = wh[chosen]
    return centroids


def _check_k(k: int) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise ConfigError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")


def _too_few_shapes_message(wh: np.ndarray, k: int) -> str:
    distinct = len(np.unique(np.asarray(wh, np.float64), axis=0))
    return (
        f"k={k} is larger than the number of distinct box shapes ({distinct}) in {len(wh)} boxes; "
        "lower k or cluster more boxes"
    )
