"""Anchor shapes by k-means with the distance ``d = 1 - IoU`` (YOLOv2 paper, "Dimension Clusters").

Boxes are compared by shape only, both centred: ``IoU((w, h), (cw, ch))`` as in
:func:`yolov2.boxes.wh_iou_np`. Shapes are **normalised** by the image size (w / image width,
h / image height), float64 (N, 2); :func:`to_grid_units` turns anchors into Darknet's
``anchors=`` units (grid cells at stride 32).

The algorithm is written as map and reduce steps so that one code path runs single-process and
distributed (``pipelines/anchors.py`` runs the map as Ray tasks):

* map: :func:`assign` on one partition of boxes -> :class:`AssignStats` (per-cluster sums of w
  and h, counts, the sum of best IoU, the changed count) plus the partition's new assignment, which
  the partition keeps for the next call (so only O(k + blocks) numbers travel to the driver);
* reduce: :func:`reduce_stats` combines partials; :func:`update_centroids` gives the new centroids;
* rarely, an empty cluster: :func:`farthest_boxes` on each partition and :func:`merge_farthest`.

:func:`lloyd` drives those steps through any :class:`AssignMapper` (here :class:`LocalMapper`;
the Ray stage supplies its own), and :func:`kmeans_anchors` adds k-means++ restarts.

**Exactness.** Sums are taken per block of ``block_size`` boxes (global box index // block_size),
sequentially in box order, and the block partials are then added in block order. Partitions start
on block boundaries (:func:`partition_bounds`), so a distributed run produces the very same block
partials as a single-process run and every centroid is bit-identical, whatever the number of
partitions or the order in which their results arrive. The numba kernel and the NumPy path compute
the same partials (see :mod:`yolov2.anchors_numba`).

**Monotonicity.** The assignment step never lowers the mean IoU (each box takes its best
centroid), but the mean update can: the mean shape of a cluster is not its IoU-best shape (boxes
(0.01, 0.01) and (1, 1) around the centroid (1, 1): mean IoU 0.50005; around their mean: 0.128).
So ``history`` is usually, not always, increasing; Lloyd stops when no assignment changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from yolov2.boxes import wh_iou_np
from yolov2.errors import ConfigError, DatasetError

BLOCK_SIZE = 4096  # boxes per summation block; partitions must start on a multiple of it
IOU_LANES = 8  # interleaved running sums of best IoU within a block (block sizes are multiples)
MIN_SHAPE, MAX_SHAPE = 1e-30, 1e30  # accepted normalised sizes: keeps every product of the kernel normal
_CENTROID_RANGE = (1e-32, 1e32)  # a little wider, for means rounded just outside the box range
MAX_K = 255  # assignments are stored as uint8
_NUMPY_CHUNK = 65536  # rows per (rows, k) IoU matrix in the NumPy path (bounds its memory)

Backend = Literal["auto", "numba", "numpy"]
Update = Literal["mean", "median"]


# ---------------------------------------------------------------------------------------------
# Input: box shapes
# ---------------------------------------------------------------------------------------------


def validate_shapes(wh: np.ndarray, source: str = "box shapes") -> np.ndarray:
    """Check normalised box shapes and return them as float64 (N, 2), Fortran order.

    Fortran order makes ``wh[:, 0]`` and ``wh[:, 1]`` contiguous, which the compiled kernel needs
    (a C-ordered input is copied once here rather than on every Lloyd iteration).
    Raises :class:`DatasetError` naming the first bad row for a wrong shape, no boxes, a
    non-finite, zero or negative size, or a size outside [``MIN_SHAPE``, ``MAX_SHAPE``].
    """
    arr = np.asarray(wh)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise DatasetError(f"{source}: expected an (N, 2) array of widths and heights, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise DatasetError(f"{source}: no boxes to cluster")
    arr = np.asfortranarray(arr, dtype=np.float64)
    if ((arr >= MIN_SHAPE) & (arr <= MAX_SHAPE)).all():  # one pass in the common case; NaN fails too
        return arr
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DatasetError(f"{source}: box {i} has a non-finite size {arr[i].tolist()} ({int(bad.sum())} such boxes)")
    bad = (arr <= 0).any(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DatasetError(
            f"{source}: box {i} has a zero or negative size {arr[i].tolist()} ({int(bad.sum())} such boxes); "
            "drop degenerate boxes before clustering"
        )
    bad = ((arr < MIN_SHAPE) | (arr > MAX_SHAPE)).any(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DatasetError(
            f"{source}: box {i} has an implausible normalised size {arr[i].tolist()} "
            f"(accepted: {MIN_SHAPE:g} to {MAX_SHAPE:g})"
        )
    return arr


def box_shapes_from_table(table: pa.Table, include_difficult: bool = True) -> np.ndarray:
    """Normalised box shapes (float64 (N, 2): w / image width, h / image height) of a records table.

    ``table`` has the records schema of :mod:`yolov2.data.records` (``width``, ``height`` and a
    ``boxes`` list of ``{x1, y1, x2, y2, difficult, iscrowd}`` in absolute pixels, xyxy); extra
    columns (``shard``, ``key`` of ``index.parquet``) are ignored. Crowd boxes are excluded, and
    difficult ones too unless ``include_difficult``. Boxes come out in table order. A missing
    column, a null, a non-positive image size or a zero, negative or non-finite box size raises
    :class:`DatasetError` naming the image (before any clustering happens).
    """
    missing = [c for c in ("width", "height", "boxes") if c not in table.column_names]
    if missing:
        raise DatasetError(f"box table: missing column(s) {', '.join(missing)}; expected the records schema")
    ids = table.column("image_id") if "image_id" in table.column_names else None

    def image_name(row: int) -> str:
        return f"image {ids[row].as_py()!r}" if ids is not None else f"row {row}"

    boxes = table.column("boxes").combine_chunks()
    if boxes.null_count:
        raise DatasetError(f"box table: {image_name(_first_null(boxes))} has a null boxes list")
    parents = pc.list_parent_indices(boxes).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = boxes.flatten()  # StructArray of every box, in table order
    if flat.null_count:
        raise DatasetError(f"box table: {image_name(int(parents[_first_null(flat)]))} has a null box")
    fields = dict(zip([f.name for f in flat.type], flat.flatten()))
    needed = ("x1", "y1", "x2", "y2", "difficult", "iscrowd")
    absent = [f for f in needed if f not in fields]
    if absent:
        raise DatasetError(f"box table: boxes lack field(s) {', '.join(absent)}")
    cols = {}
    for name in needed:
        col = fields[name]
        if col.null_count:
            raise DatasetError(f"box table: {image_name(int(parents[_first_null(col)]))} has a box with a null {name}")
        cols[name] = col.to_numpy(zero_copy_only=False)
    sizes = {}
    for name in ("width", "height"):
        col = table.column(name).combine_chunks()
        if col.null_count:
            raise DatasetError(f"box table: {image_name(_first_null(col))} has a null {name}")
        size = col.to_numpy(zero_copy_only=False).astype(np.float64)
        bad = np.flatnonzero(~(size > 0))
        if bad.size:
            raise DatasetError(f"box table: {image_name(int(bad[0]))} has a non-positive image {name} {size[bad[0]]}")
        sizes[name] = size

    keep = ~cols["iscrowd"].astype(bool)
    if not include_difficult:
        keep &= ~cols["difficult"].astype(bool)
    keep_idx = np.flatnonzero(keep)
    x1, y1, x2, y2 = (cols[c].astype(np.float64)[keep_idx] for c in ("x1", "y1", "x2", "y2"))
    rows = parents[keep_idx]
    wh = np.empty((keep_idx.size, 2), dtype=np.float64, order="F")
    wh[:, 0] = (x2 - x1) / sizes["width"][rows]
    wh[:, 1] = (y2 - y1) / sizes["height"][rows]
    bad = ~(np.isfinite(wh).all(axis=1) & (wh > 0).all(axis=1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        row = int(rows[i])
        box_number = int(keep_idx[i] - np.searchsorted(parents, row))  # index within the image's boxes
        raise DatasetError(
            f"box table: {image_name(row)} box {box_number} has a zero, negative or non-finite size "
            f"(x1={x1[i]}, y1={y1[i]}, x2={x2[i]}, y2={y2[i]}); {int(bad.sum())} such boxes"
        )
    return wh


def _first_null(arr: pa.Array) -> int:
    return int(np.flatnonzero(~np.asarray(arr.is_valid()))[0])


# ---------------------------------------------------------------------------------------------
# Map: assignment of one partition
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AssignStats:
    """Partial (or reduced) result of assigning boxes to k centroids.

    Block partials cover blocks ``start_block .. start_block + B - 1`` of ``block_size`` boxes:
    sum_w, sum_h (float64[B, k]): per block and cluster, the sum of w and of h (normalised);
    sum_iou (float64[B]): per block, the sum of each box's best IoU. counts (int64[k]): boxes per
    cluster. changed: boxes whose cluster differs from the previous assignment (all of them when
    there was none). values: for the median update only, per cluster the (n_j, 2) shapes of its
    boxes (O(N) data: see :func:`update_centroids`).
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
        import yolov2.anchors_numba  # noqa: F401
    except ImportError:
        if backend == "numba":
            raise
        return False
    return True


def _assign_numba(
    wh: np.ndarray, centroids: np.ndarray, previous: np.ndarray | None, block_size: int, num_blocks: int,
    num_threads: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    import numba

    from yolov2.anchors_numba import assign_blocks

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
    # never more threads than blocks: waking idle threads costs more than small inputs take
    numba.set_num_threads(max(1, min(threads, num_blocks, numba.config.NUMBA_NUM_THREADS)))
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
    for lo in range(0, n, _NUMPY_CHUNK):
        iou = wh_iou_np(wh[lo : lo + _NUMPY_CHUNK], centroids)
        a = iou.argmax(axis=1)
        assignment[lo : lo + _NUMPY_CHUNK] = a
        best[lo : lo + _NUMPY_CHUNK] = iou[np.arange(a.size), a]
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


# ---------------------------------------------------------------------------------------------
# Reduce and update
# ---------------------------------------------------------------------------------------------


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
    if all(p.values is not None for p in parts):
        values = tuple(np.concatenate([p.values[j] for p in parts]) for j in range(first.k))
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
    for lo in range(0, len(wh), _NUMPY_CHUNK):
        best[lo : lo + _NUMPY_CHUNK] = wh_iou_np(wh[lo : lo + _NUMPY_CHUNK], np.asarray(centroids, np.float64)).max(1)
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


# ---------------------------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------------------------


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
        from yolov2.anchors_numba import pp_locate, pp_total, pp_update
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


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def partition_bounds(n: int, parts: int, block_size: int = BLOCK_SIZE) -> list[tuple[int, int]]:
    """Split n boxes into at most ``parts`` contiguous ``(start, stop)`` ranges on block boundaries."""
    if parts < 1:
        raise ConfigError(f"partitions must be at least 1, got {parts}")
    num_blocks = max(1, -(-n // block_size))
    parts = min(parts, num_blocks)
    edges = [(num_blocks * i // parts) * block_size for i in range(parts)] + [n]
    return [(edges[i], min(edges[i + 1], n)) for i in range(parts)]


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
                self.wh[lo:hi], centroids, self._previous[i], start=lo, block_size=self.block_size,
                collect_values=collect_values, backend=self.backend, num_threads=self.num_threads,
            )
            out.append(stats)
        return out

    def farthest(self, centroids: np.ndarray, count: int) -> list[FarthestBoxes]:
        return [farthest_boxes(self.wh[lo:hi], centroids, count, start=lo) for lo, hi in self.bounds]


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


def mean_iou(
    wh: np.ndarray, anchors: np.ndarray, *, block_size: int = BLOCK_SIZE, backend: Backend = "auto"
) -> float:
    """Mean over boxes of the best IoU with any anchor; wh (float64[N, 2]) and anchors (float64[k, 2])
    in the same units (both normalised, or both grid cells at the same input size)."""
    stats, _ = assign(validate_shapes(wh), anchors, block_size=block_size, backend=backend)
    return stats.mean_iou


def iou_table(
    wh: np.ndarray,
    ks: Sequence[int] = range(1, 11),
    seed: int = 0,
    n_init: int = 3,
    max_iter: int = 300,
    update: Update = "mean",
    *,
    backend: Backend = "auto",
    mapper: AssignMapper | None = None,
) -> dict[int, float]:
    """Mean IoU of the best clustering for each k (the paper's Figure 2 "Box Generation" curve)."""
    wh = validate_shapes(wh)
    return {
        int(k): kmeans_anchors(wh, int(k), seed, n_init, max_iter, update, backend=backend, mapper=mapper).mean_iou
        for k in ks
    }


def to_grid_units(anchors: np.ndarray, input_size: int, stride: int = 32) -> np.ndarray:
    """Normalised anchors (float[k, 2]) -> grid cells at ``stride`` (Darknet's ``anchors=``):
    ``w * input_size / stride`` (13 cells across at 416)."""
    if input_size <= 0 or stride <= 0 or input_size % stride:
        raise ConfigError(f"input_size {input_size} must be a positive multiple of the stride {stride}")
    return np.asarray(anchors, dtype=np.float64) * (input_size / stride)


def from_grid_units(anchors: np.ndarray, input_size: int, stride: int = 32) -> np.ndarray:
    """Inverse of :func:`to_grid_units`: grid-cell anchors (e.g. a pinned Darknet list) -> normalised."""
    if input_size <= 0 or stride <= 0 or input_size % stride:
        raise ConfigError(f"input_size {input_size} must be a positive multiple of the stride {stride}")
    return np.asarray(anchors, dtype=np.float64) / (input_size / stride)


__all__ = [
    "BLOCK_SIZE",
    "AnchorResult",
    "AssignMapper",
    "AssignStats",
    "FarthestBoxes",
    "LocalMapper",
    "assign",
    "best_result",
    "box_shapes_from_table",
    "farthest_boxes",
    "from_grid_units",
    "iou_table",
    "kmeans_anchors",
    "kmeans_pp_init",
    "lloyd",
    "mean_iou",
    "merge_farthest",
    "partition_bounds",
    "reduce_stats",
    "restart_seeds",
    "to_grid_units",
    "update_centroids",
    "validate_shapes",
]
