"""Partitioned map-reduce for the anchor k-means: partitions, the reduce, and where the map runs.

* :func:`partition_bounds` splits the boxes on block boundaries, so that a distributed run produces
  the very same block partials as a single-process one;
* :func:`reduce_stats` combines the partials of :func:`yolov2.anchors.assignment.assign` (in any
  order) into those of one call over all boxes;
* rarely, an empty cluster: :func:`farthest_boxes` on each partition and :func:`merge_farthest`;
* :class:`AssignMapper` is where the map steps run: :class:`LocalMapper` in this process, or Ray
  tasks (``pipelines/anchors.py``), which keep each partition's assignment so that only
  O(k + blocks) numbers travel to the driver.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from yolov2.anchors.assignment import BLOCK_SIZE, NUMPY_CHUNK, AssignStats, Backend, assign
from yolov2.anchors.shapes import validate_shapes
from yolov2.boxes import wh_iou_np
from yolov2.errors import ConfigError


def partition_bounds(n: int, parts: int, block_size: int = BLOCK_SIZE) -> list[tuple[int, int]]:
    """Split n boxes into at most ``parts`` contiguous ``(start, stop)`` ranges on block boundaries."""
    if parts < 1:
        raise ConfigError(f"partitions must be at least 1, got {parts}")
    num_blocks = max(1, -(-n // block_size))
    parts = min(parts, num_blocks)
    edges = [(num_blocks * i // parts) * block_size for i in range(parts)] + [n]
    return [(edges[i], min(edges[i + 1], n)) for i in range(parts)]


def reduce_stats(parts: Sequence[AssignStats]) -> AssignStats:
    """Combine partition partials (in any order) into the stats of their union.

    The partials must tile consecutive blocks (every partition but the last a whole number of
    blocks); block partials are concatenated in block order, so the reduced sums are exactly those
    of one :func:`assign` call over all boxes.
    """
    if not parts:
        raise ConfigError("reduce_stats: no partial results to combine")
    parts = sorted(parts, key=lambda p: p.start_block)
    first = parts[0]
    for p in parts:
        if p.block_size != first.block_size or p.k != first.k:
            raise ConfigError("reduce_stats: partials differ in block_size or number of clusters")
    for a, b in zip(parts, parts[1:]):
        if a.num_boxes % a.block_size or b.start_block != a.start_block + a.num_blocks:
            raise ConfigError(
                f"reduce_stats: partials do not tile the boxes (blocks {a.start_block}+{a.num_blocks} "
                f"then {b.start_block}); partition on block boundaries with partition_bounds()"
            )
    values = None
    part_values = [p.values for p in parts if p.values is not None]
    if len(part_values) == len(parts):
        values = tuple(np.concatenate([v[j] for v in part_values]) for j in range(first.k))
    return AssignStats(
        start_block=first.start_block,
        block_size=first.block_size,
        num_boxes=sum(p.num_boxes for p in parts),
        sum_w=np.ascontiguousarray(np.concatenate([p.sum_w for p in parts])),
        sum_h=np.ascontiguousarray(np.concatenate([p.sum_h for p in parts])),
        sum_iou=np.concatenate([p.sum_iou for p in parts]),
        counts=np.sum([p.counts for p in parts], axis=0).astype(np.int64),
        changed=sum(p.changed for p in parts),
        values=values,
    )


@dataclass(frozen=True)
class FarthestBoxes:
    """Candidates to re-seed empty clusters, from one partition.

    best_iou (float64[m]) ascending (farthest first), index (int64[m]) global box indices, wh
    (float64[m, 2]); distinct shapes only, each at its first (lowest-index) occurrence.
    """

    best_iou: np.ndarray
    index: np.ndarray
    wh: np.ndarray


def farthest_boxes(wh: np.ndarray, centroids: np.ndarray, count: int, *, start: int = 0) -> FarthestBoxes:
    """Up to ``count`` distinct box shapes farthest (lowest best IoU) from every centroid.

    Order: best IoU ascending, then global index (``start`` + row) ascending; boxes that coincide
    with a centroid (best IoU 1) are never candidates. Only called when a cluster is empty.
    """
    wh = np.asarray(wh, dtype=np.float64)
    best = np.empty(len(wh))
    for lo in range(0, len(wh), NUMPY_CHUNK):
        best[lo : lo + NUMPY_CHUNK] = wh_iou_np(wh[lo : lo + NUMPY_CHUNK], np.asarray(centroids, np.float64)).max(1)
    index = np.arange(start, start + len(wh), dtype=np.int64)
    return _top_distinct(best, index, wh, count)


def merge_farthest(parts: Sequence[FarthestBoxes], count: int) -> np.ndarray:
    """Global top ``count`` distinct farthest shapes (float64[<=count, 2]) from partition candidates."""
    if not parts:
        return np.zeros((0, 2))
    merged = _top_distinct(
        np.concatenate([p.best_iou for p in parts]),
        np.concatenate([p.index for p in parts]),
        np.concatenate([np.asarray(p.wh, np.float64).reshape(-1, 2) for p in parts]),
        count,
    )
    return merged.wh


def _top_distinct(best: np.ndarray, index: np.ndarray, wh: np.ndarray, count: int) -> FarthestBoxes:
    keep = best < 1.0
    best, index, wh = best[keep], index[keep], wh[keep]
    order = np.lexsort((index, best))
    best, index, wh = best[order], index[order], wh[order]
    _, first = np.unique(wh, axis=0, return_index=True)
    first = np.sort(first)[:count]
    return FarthestBoxes(best_iou=best[first], index=index[first], wh=np.ascontiguousarray(wh[first]))


class AssignMapper(Protocol):
    """Where the map steps run: in this process (:class:`LocalMapper`) or as Ray tasks (the stage).

    It owns the partitions and their previous assignments; :func:`lloyd` calls ``reset`` once per
    run, then ``assign`` every iteration and ``farthest`` only when a cluster is empty.
    """

    def reset(self) -> None: ...

    def assign(self, centroids: np.ndarray, collect_values: bool = False) -> list[AssignStats]: ...

    def farthest(self, centroids: np.ndarray, count: int) -> list[FarthestBoxes]: ...


class LocalMapper:
    """The map steps over in-process partitions of ``wh`` (float64[N, 2], normalised)."""

    def __init__(
        self,
        wh: np.ndarray,
        partitions: int = 1,
        block_size: int = BLOCK_SIZE,
        backend: Backend = "auto",
        num_threads: int | None = None,
    ) -> None:
        self.wh = validate_shapes(wh)
        self.bounds = partition_bounds(len(self.wh), partitions, block_size)
        self.block_size = block_size
        self.backend = backend
        self.num_threads = num_threads
        self._previous: list[np.ndarray | None] = [None] * len(self.bounds)

    def reset(self) -> None:
        self._previous = [None] * len(self.bounds)

    def assign(self, centroids: np.ndarray, collect_values: bool = False) -> list[AssignStats]:
        out = []
        for i, (lo, hi) in enumerate(self.bounds):
            stats, self._previous[i] = assign(
                self.wh[lo:hi],
                centroids,
                self._previous[i],
                start=lo,
                block_size=self.block_size,
                collect_values=collect_values,
                backend=self.backend,
                num_threads=self.num_threads,
            )
            out.append(stats)
        return out

    def farthest(self, centroids: np.ndarray, count: int) -> list[FarthestBoxes]:
        return [farthest_boxes(self.wh[lo:hi], centroids, count, start=lo) for lo, hi in self.bounds]
