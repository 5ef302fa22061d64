"""Map step of the anchor k-means: assign one partition of boxes to k centroids by IoU.

A box's distance to a centroid is ``d = 1 - IoU`` of the two shapes, both centred
(:func:`yolov2.boxes.wh_iou_np`), so each box takes its highest-IoU centroid (the first on ties).
:func:`assign` returns :class:`AssignStats` (per-block partial sums) and the new assignment.

**Exactness.** Sums are taken per block of ``block_size`` boxes (global box index // block_size),
sequentially in box order; :func:`yolov2.anchors.partitions.reduce_stats` adds the block partials
in block order. Two backends compute the same partials bit for bit: the NumPy reference here and
the compiled kernel of :mod:`yolov2.anchors.kernels`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from yolov2.boxes import wh_iou_np
from yolov2.errors import ConfigError, DatasetError

BLOCK_SIZE = 4096  # boxes per summation block; partitions must start on a multiple of it
IOU_LANES = 8  # interleaved running sums of best IoU within a block (block sizes are multiples)
_CENTROID_RANGE = (1e-32, 1e32)  # a little wider, for means rounded just outside the box range
MAX_K = 255  # assignments are stored as uint8
NUMPY_CHUNK = 65536  # rows per (rows, k) IoU matrix in the NumPy path (bounds its memory)

Backend = Literal["auto", "numba", "numpy"]


@dataclass(frozen=True)
class AssignStats:
    """Partial (or reduced) result of assigning boxes to k centroids.

    Block partials cover blocks ``start_block .. start_block + B - 1`` of ``block_size`` boxes:
    sum_w, sum_h (float64[B, k]): per block and cluster, the sum of w and of h (normalised);
    sum_iou (float64[B]): per block, the sum of each box's best IoU. counts (int64[k]): boxes per
    cluster. changed: boxes whose cluster differs from the previous assignment (all of them when
    there was none). values: for the median update only, per cluster the (n_j, 2) shapes of its
    boxes (O(N) data: see :func:`yolov2.anchors.kmeans.update_centroids`).
    """

    start_block: int
    block_size: int
    num_boxes: int
    sum_w: np.ndarray
    sum_h: np.ndarray
    sum_iou: np.ndarray
    counts: np.ndarray
    changed: int
    values: tuple[np.ndarray, ...] | None = None

    @property
    def k(self) -> int:
        return int(self.counts.shape[0])

    @property
    def num_blocks(self) -> int:
        return int(self.sum_w.shape[0])

    def totals(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-cluster sums of w and of h (float64[k] each), blocks added in block order."""
        return _ordered_sum(self.sum_w), _ordered_sum(self.sum_h)

    @property
    def mean_iou(self) -> float:
        """Mean over boxes of the IoU with their best centroid (independent of the centroids' order)."""
        return float(_ordered_sum(self.sum_iou) / self.num_boxes)


def _ordered_sum(blocks: np.ndarray) -> np.ndarray:
    """Sum over the first axis strictly first to last (cumsum is sequential): [B, ...] -> [...]."""
    if blocks.shape[0] == 0:
        return np.zeros(blocks.shape[1:], dtype=np.float64)
    return np.cumsum(blocks, axis=0)[-1]


def assign(
    wh: np.ndarray,
    centroids: np.ndarray,
    previous: np.ndarray | None = None,
    *,
    start: int = 0,
    block_size: int = BLOCK_SIZE,
    collect_values: bool = False,
    backend: Backend = "auto",
    num_threads: int | None = None,
) -> tuple[AssignStats, np.ndarray]:
    """Map step: assign boxes to their highest-IoU centroid (first one on ties).

    wh (float64[n, 2], normalised, ideally from :func:`validate_shapes`): one partition whose first
    box has global index ``start`` (a multiple of ``block_size``). centroids (float64[k, 2], k <= 255).
    previous (uint8[n] or None): this partition's last assignment, to count changes.
    Returns the partial stats and the new assignment (uint8[n]), which the caller keeps with the
    partition for the next call. ``num_threads`` caps numba's threads for this call (e.g. 1 inside
    a one-CPU Ray task). Both backends give bit-identical results. The sizes are not re-checked
    here (this runs every iteration): validate them once with :func:`validate_shapes`.
    """
    wh = _as_kernel_input(wh)
    centroids = np.ascontiguousarray(centroids, dtype=np.float64)
    if centroids.ndim != 2 or centroids.shape[1] != 2 or not 1 <= centroids.shape[0] <= MAX_K:
        raise ConfigError(f"centroids must be a (k, 2) array with 1 <= k <= {MAX_K}, got shape {centroids.shape}")
    lo, hi = _CENTROID_RANGE
    if not (np.isfinite(centroids).all() and (centroids >= lo).all() and (centroids <= hi).all()):
        raise ConfigError(f"centroids must be finite sizes in [{lo:g}, {hi:g}], got {centroids.tolist()}")
    if block_size <= 0 or block_size % IOU_LANES:
        raise ConfigError(f"block_size {block_size} must be a positive multiple of {IOU_LANES}")
    if start < 0 or start % block_size:
        raise ConfigError(f"partition start {start} must be a non-negative multiple of block_size {block_size}")
    n, k = wh.shape[0], centroids.shape[0]
    if previous is not None:
        previous = np.ascontiguousarray(previous, dtype=np.uint8)
        if previous.shape != (n,):
            raise ConfigError(f"previous assignment has shape {previous.shape}, expected ({n},)")
    num_blocks = -(-n // block_size)
    if _use_numba(backend):
        assignment, sum_w, sum_h, sum_iou, counts, changed = _assign_numba(
            wh, centroids, previous, block_size, num_blocks, num_threads
        )
    else:
        assignment, sum_w, sum_h, sum_iou, counts, changed = _assign_numpy(
            wh, centroids, previous, block_size, num_blocks
        )
    values = None
    if collect_values:
        order = np.argsort(assignment, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(counts)])
        values = tuple(np.ascontiguousarray(wh[order[bounds[j] : bounds[j + 1]]]) for j in range(k))
    stats = AssignStats(
        start_block=start // block_size,
        block_size=block_size,
        num_boxes=n,
        sum_w=sum_w,
        sum_h=sum_h,
        sum_iou=sum_iou,
        counts=counts,
        changed=changed,
        values=values,
    )
    return stats, assignment


def _as_kernel_input(wh: np.ndarray) -> np.ndarray:
    """float64 (n, 2) with contiguous columns; copies only when the layout is wrong."""
    arr = np.asarray(wh)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise DatasetError(f"box shapes: expected an (N, 2) array, got shape {arr.shape}")
    if arr.dtype != np.float64 or not (arr[:, 0].flags.c_contiguous and arr[:, 1].flags.c_contiguous):
        arr = np.asfortranarray(arr, dtype=np.float64)
    return arr


def _use_numba(backend: Backend) -> bool:
    if backend == "numpy":
        return False
    if backend not in ("auto", "numba"):
        raise ConfigError(f"backend must be 'auto', 'numba' or 'numpy', got {backend!r}")
    try:
        import yolov2.anchors.kernels  # noqa: F401
    except ImportError:
        if backend == "numba":
            raise
        return False
    return True


def _assign_numba(
    wh: np.ndarray,
    centroids: np.ndarray,
    previous: np.ndarray | None,
    block_size: int,
    num_blocks: int,
    num_threads: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    import numba

    from yolov2.anchors.kernels import assign_blocks

    n, k = wh.shape[0], centroids.shape[0]
    assignment = np.empty(n, dtype=np.uint8)
    sum_w = np.zeros((num_blocks, k))
    sum_h = np.zeros((num_blocks, k))
    sum_iou = np.zeros(num_blocks)
    block_counts = np.zeros((num_blocks, k), dtype=np.int64)
    block_changed = np.zeros(num_blocks, dtype=np.int64)
    prev = previous if previous is not None else np.empty(0, dtype=np.uint8)
    w, h = wh[:, 0], wh[:, 1]  # contiguous views (Fortran-ordered wh)
    cw, ch = np.ascontiguousarray(centroids[:, 0]), np.ascontiguousarray(centroids[:, 1])
    saved = numba.get_num_threads()
    threads = saved if num_threads is None else int(num_threads)
    # numba.config's attributes are set at import time, from the environment: invisible to type checkers
    max_threads = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]
    # never more threads than blocks: waking idle threads costs more than small inputs take
    numba.set_num_threads(max(1, min(threads, num_blocks, max_threads)))
    try:
        assign_blocks(
            w, h, cw, ch, prev, block_size, IOU_LANES, assignment, sum_w, sum_h, sum_iou, block_counts, block_changed
        )
    finally:
        numba.set_num_threads(saved)
    changed = int(block_changed.sum()) if previous is not None else n
    return assignment, sum_w, sum_h, sum_iou, block_counts.sum(axis=0), changed


def _assign_numpy(
    wh: np.ndarray, centroids: np.ndarray, previous: np.ndarray | None, block_size: int, num_blocks: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Reference path: wh_iou_np, np.argmax (first max), and np.bincount (sequential sums)."""
    n, k = wh.shape[0], centroids.shape[0]
    assignment = np.empty(n, dtype=np.uint8)
    best = np.empty(n, dtype=np.float64)
    for lo in range(0, n, NUMPY_CHUNK):
        iou = wh_iou_np(wh[lo : lo + NUMPY_CHUNK], centroids)
        a = iou.argmax(axis=1)
        assignment[lo : lo + NUMPY_CHUNK] = a
        best[lo : lo + NUMPY_CHUNK] = iou[np.arange(a.size), a]
    box = np.arange(n, dtype=np.int64)
    key = (box // block_size) * k + assignment
    sum_w = np.bincount(key, weights=wh[:, 0], minlength=num_blocks * k).reshape(num_blocks, k)
    sum_h = np.bincount(key, weights=wh[:, 1], minlength=num_blocks * k).reshape(num_blocks, k)
    lane_key = (box // block_size) * IOU_LANES + box % IOU_LANES
    lanes = np.bincount(lane_key, weights=best, minlength=num_blocks * IOU_LANES).reshape(num_blocks, IOU_LANES)
    sum_iou = np.cumsum(lanes, axis=1)[:, -1]  # lane 0 first, as the kernel adds them
    counts = np.bincount(assignment, minlength=k).astype(np.int64)
    changed = int(np.count_nonzero(assignment != previous)) if previous is not None else n
    return assignment, sum_w, sum_h, np.ascontiguousarray(sum_iou), counts, changed
