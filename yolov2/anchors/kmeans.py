"""The anchor k-means (Lloyd with d = 1 - IoU, k-means++ restarts) over any :class:`AssignMapper`.

Each Lloyd iteration maps :func:`yolov2.anchors.assignment.assign` over the partitions, reduces
(:func:`yolov2.anchors.partitions.reduce_stats`), and updates the centroids
(:func:`update_centroids`); :func:`kmeans_anchors` adds k-means++ restarts.

**Monotonicity.** The assignment step never lowers the mean IoU (each box takes its best
centroid), but the mean update can: the mean shape of a cluster is not its IoU-best shape (boxes
(0.01, 0.01) and (1, 1) around the centroid (1, 1): mean IoU 0.50005; around their mean: 0.128).
So ``history`` is usually, not always, increasing; Lloyd stops when no assignment changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from yolov2.anchors.assignment import BLOCK_SIZE, AssignStats, Backend
from yolov2.anchors.partitions import AssignMapper, LocalMapper, merge_farthest, reduce_stats
from yolov2.anchors.seeding import _check_k, _kmeans_pp_init, restart_seeds
from yolov2.anchors.shapes import validate_shapes
from yolov2.errors import ConfigError

Update = Literal["mean", "median"]


def update_centroids(stats: AssignStats, mode: Update = "mean", reseed: np.ndarray | None = None) -> np.ndarray:
    """New centroids (float64[k, 2]) from reduced stats.

    ``mean``: per-cluster mean of w and h. ``median``: per-cluster median of w and h; it needs
    the boxes' values (``collect_values=True`` in :func:`assign`), which makes the distributed map
    ship O(N) numbers per iteration (the median of a multiset does not depend on its order, so it
    is still exact). Empty clusters, in index order, take the shapes in ``reseed`` (the farthest
    boxes, from :func:`merge_farthest`); without enough of them this raises :class:`ConfigError`.
    """
    empty = np.flatnonzero(stats.counts == 0)
    filled = np.flatnonzero(stats.counts > 0)
    centroids = np.empty((stats.k, 2), dtype=np.float64)
    if mode == "mean":
        tw, th = stats.totals()
        centroids[filled, 0] = tw[filled] / stats.counts[filled]
        centroids[filled, 1] = th[filled] / stats.counts[filled]
    elif mode == "median":
        if stats.values is None:
            raise ConfigError("median update needs assign(..., collect_values=True)")
        for j in filled:
            centroids[j] = np.median(stats.values[j], axis=0)
    else:
        raise ConfigError(f"update must be 'mean' or 'median', got {mode!r}")
    if empty.size:
        if reseed is None or len(reseed) < empty.size:
            got = 0 if reseed is None else len(reseed)
            raise ConfigError(
                f"{empty.size} empty cluster(s) but only {got} box shape(s) left to re-seed them: "
                "fewer distinct box shapes than k"
            )
        centroids[empty] = np.asarray(reseed, dtype=np.float64)[: empty.size]
    return centroids


@dataclass(frozen=True)
class AnchorResult:
    """Outcome of k-means on box shapes.

    anchors (float64[k, 2]): normalised (w, h), sorted by area (then width). mean_iou: mean over
    boxes of the best IoU with these anchors. counts (int64[k]): boxes assigned to each anchor.
    iterations: assignment passes run (the last one finds no change when ``converged``).
    history: mean IoU of each pass's assignment, to the centroids of that pass. restart: index of
    the winning restart.
    """

    anchors: np.ndarray
    mean_iou: float
    counts: np.ndarray
    iterations: int
    converged: bool
    history: tuple[float, ...] = field(default_factory=tuple)
    restart: int = 0


def lloyd(init: np.ndarray, mapper: AssignMapper, max_iter: int = 300, update: Update = "mean") -> AnchorResult:
    """Lloyd iterations from ``init`` (float64[k, 2]) until no box changes cluster, or ``max_iter``.

    Each iteration: map ``assign`` over the partitions, reduce, stop if nothing changed (and no
    cluster is empty), else update (re-seeding empty clusters from the farthest boxes). The anchors
    returned are the centroids of the last assignment, sorted by area, with that assignment's mean
    IoU (which equals ``mean_iou(wh, anchors)``: a box's best IoU does not depend on the order).
    """
    if max_iter < 1:
        raise ConfigError(f"max_iter must be at least 1, got {max_iter}")
    if update not in ("mean", "median"):
        raise ConfigError(f"update must be 'mean' or 'median', got {update!r}")
    centroids = np.array(init, dtype=np.float64)
    mapper.reset()
    history: list[float] = []
    converged = False
    iteration = 0
    for iteration in range(1, max_iter + 1):
        stats = reduce_stats(mapper.assign(centroids, collect_values=update == "median"))
        history.append(stats.mean_iou)
        empty = np.flatnonzero(stats.counts == 0)
        if iteration > 1 and stats.changed == 0 and empty.size == 0:
            converged = True
            break
        if iteration == max_iter:
            break
        reseed = merge_farthest(mapper.farthest(centroids, empty.size), empty.size) if empty.size else None
        centroids = update_centroids(stats, update, reseed)
    order = np.lexsort((centroids[:, 0], centroids[:, 0] * centroids[:, 1]))
    return AnchorResult(
        anchors=centroids[order],
        mean_iou=stats.mean_iou,
        counts=stats.counts[order],
        iterations=iteration,
        converged=converged,
        history=tuple(history),
    )


def best_result(results: Sequence[AnchorResult]) -> AnchorResult:
    """The restart with the highest mean IoU (the lowest restart index on ties), tagged with its index."""
    if not results:
        raise ConfigError("best_result: no restarts")
    winner = 0
    for i, r in enumerate(results):
        if r.mean_iou > results[winner].mean_iou:
            winner = i
    r = results[winner]
    return AnchorResult(r.anchors, r.mean_iou, r.counts, r.iterations, r.converged, r.history, restart=winner)


def kmeans_anchors(
    wh: np.ndarray,
    k: int,
    seed: int = 0,
    n_init: int = 3,
    max_iter: int = 300,
    update: Update = "mean",
    *,
    backend: Backend = "auto",
    partitions: int = 1,
    block_size: int = BLOCK_SIZE,
    num_threads: int | None = None,
    mapper: AssignMapper | None = None,
) -> AnchorResult:
    """k anchors (normalised, sorted by area) for box shapes wh (float64[N, 2], normalised).

    ``n_init`` k-means++ restarts seeded by ``restart_seeds(seed, n_init)``; the one with the
    highest mean IoU wins. ``partitions`` splits the map step in-process exactly as a distributed
    run would; the result does not depend on it, nor on the backend, bit for bit. ``mapper``
    (e.g. Ray tasks over partitions of the same ``wh``) replaces the in-process one; the
    initialisation always runs here, on the whole ``wh``.
    """
    wh = validate_shapes(wh)
    _check_k(k)
    if mapper is None:
        mapper = LocalMapper(wh, partitions, block_size, backend, num_threads)
    results = []
    for child in restart_seeds(seed, n_init):
        init = _kmeans_pp_init(wh, k, np.random.default_rng(child), backend)
        results.append(lloyd(init, mapper, max_iter, update))
    return best_result(results)
