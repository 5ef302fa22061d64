"""The `anchors` stage: k-means anchor shapes (1 - IoU distance) from the training split's box table.

Reads only ``train-index.parquet`` from the shard stage (never the images) and takes every box's
shape normalised by its image size. The shapes are split into ``anchors.partitions`` contiguous
partitions, put once in the Ray object store; each Lloyd iteration runs one remote ``assign`` task
per partition and reduces the partials on the driver (:class:`RayMapper`, an
:class:`yolov2.anchors.AssignMapper`). Every restart (``anchors.n_init``), and every k of the
k = 1..10 table (the paper's Figure 2), runs its own Lloyd loop concurrently on a driver thread that
submits its own tasks over the same partitions. The sums are taken per block in box order, so the
result is bit-identical to the single-process ``kmeans_anchors`` with the same seed and block size.

Output: ``anchors.json`` (anchors in grid cells at stride 32 for ``train.input_size``, what
Darknet's ``anchors=`` means, sorted by area; the normalised anchors; mean IoU; the k table; a
ready-to-paste ``anchors=`` line) and ``anchors.png`` (anchor rectangles over the box shapes, mean
IoU against k), both also in MLflow. ``anchors.pinned`` skips clustering and writes those anchors
(in the given order) with their mean IoU on the data.

Run alone: ``python -m pipelines.anchors --config configs/demo.yaml``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from pipelines import shard
from pipelines.cli_common import stage_main
from pipelines.config import PipelineConfig
from pipelines.dag import StageContext, StageSpec
from yolov2 import anchors as anchors_lib
from yolov2.errors import ConfigError, DatasetError
from yolov2.metrics.figures import anchors_figure, figure_png
from yolov2.progress import Progress

log = logging.getLogger(__name__)
STRIDE = 32  # YOLOv2's output stride: anchors are in cells of the 13x13 grid at 416
TABLE_KS = range(1, 11)  # the paper's Figure 2
ANCHORS_FILE = "anchors.json"
PLOT_FILE = "anchors.png"


# ---------------------------------------------------------------------------------------------
# The map step as Ray tasks
# ---------------------------------------------------------------------------------------------


def stage_block_size(num_boxes: int, partitions: int) -> int:
    """Summation block size giving ``partitions`` partitions: ``anchors_lib.BLOCK_SIZE`` when there are enough
    boxes (so large inputs sum exactly as the library's default), smaller for small inputs (a
    multiple of ``anchors_lib.IOU_LANES``), since partitions start on block boundaries."""
    if partitions < 1:
        raise ConfigError(f"anchors.partitions must be at least 1, got {partitions}")
    per_part = -(-max(num_boxes, 1) // partitions)
    lanes = anchors_lib.IOU_LANES
    return min(anchors_lib.BLOCK_SIZE, max(lanes, -(-per_part // lanes) * lanes))


def _assign_partition(
    part: np.ndarray,
    centroids: np.ndarray,
    previous: np.ndarray | None,
    start: int,
    block_size: int,
    collect_values: bool,
    backend: anchors_lib.Backend,
):
    """Ray task body: :func:`yolov2.anchors.assign` on one partition with one numba thread (one CPU)."""
    return anchors_lib.assign(
        part,
        centroids,
        previous,
        start=start,
        block_size=block_size,
        collect_values=collect_values,
        backend=backend,
        num_threads=1,
    )


def _farthest_partition(part: np.ndarray, centroids: np.ndarray, count: int, start: int) -> anchors_lib.FarthestBoxes:
    return anchors_lib.farthest_boxes(part, centroids, count, start=start)


@dataclass(frozen=True)
class RayPartitions:
    """Box shapes (float64[N, 2], normalised) cut on block boundaries and put once in the object store.

    Shared, read-only, by every :class:`RayMapper` (every restart and every k) of a stage run.
    """

    refs: tuple[Any, ...]  # ray.ObjectRef per partition, Fortran-ordered float64[n_i, 2]
    bounds: tuple[tuple[int, int], ...]  # (start, stop) global box indices
    block_size: int
    num_boxes: int
    backend: anchors_lib.Backend
    assign_task: Any  # the remote functions, created once per put
    farthest_task: Any

    @staticmethod
    def put(
        wh: np.ndarray, partitions: int, block_size: int = anchors_lib.BLOCK_SIZE, backend: anchors_lib.Backend = "auto"
    ) -> RayPartitions:
        wh = anchors_lib.validate_shapes(wh)
        bounds = anchors_lib.partition_bounds(len(wh), partitions, block_size)
        refs = tuple(ray.put(np.asfortranarray(wh[lo:hi])) for lo, hi in bounds)
        return RayPartitions(
            refs=refs,
            bounds=tuple(bounds),
            block_size=block_size,
            num_boxes=len(wh),
            backend=backend,
            assign_task=ray.remote(num_cpus=1, num_returns=2, scheduling_strategy="SPREAD")(_assign_partition),
            farthest_task=ray.remote(num_cpus=1)(_farthest_partition),
        )


class RayMapper:
    """:class:`yolov2.anchors.AssignMapper` running ``assign`` as one Ray task per partition.

    Each partition's latest assignment (uint8[n_i]) stays in the object store and is passed to the
    next task by reference; only the O(k + blocks) partial sums come back to the driver. One mapper
    per concurrent Lloyd loop (it holds that loop's assignments); the partitions are shared.
    """

    def __init__(self, partitions: RayPartitions) -> None:
        self.partitions = partitions
        self._previous: list[Any] = [None] * len(partitions.bounds)

    def reset(self) -> None:
        self._previous = [None] * len(self.partitions.bounds)

    def assign(self, centroids: np.ndarray, collect_values: bool = False) -> list[anchors_lib.AssignStats]:
        p = self.partitions
        outs = [
            p.assign_task.remote(ref, centroids, prev, lo, p.block_size, collect_values, p.backend)
            for ref, prev, (lo, _) in zip(p.refs, self._previous, p.bounds)
        ]
        self._previous = [o[1] for o in outs]
        return ray.get([o[0] for o in outs])

    def farthest(self, centroids: np.ndarray, count: int) -> list[anchors_lib.FarthestBoxes]:
        p = self.partitions
        return ray.get([p.farthest_task.remote(ref, centroids, count, lo) for ref, (lo, _) in zip(p.refs, p.bounds)])


def parallel_kmeans(
    wh: np.ndarray,
    partitions: RayPartitions,
    ks: Sequence[int],
    seed: int = 0,
    n_init: int = 3,
    max_iter: int = 300,
    update: anchors_lib.Update = "mean",
    progress: bool = False,
) -> dict[int, anchors_lib.AnchorResult]:
    """``kmeans_anchors(wh, k, seed, n_init, ...)`` for every k in ``ks``, all restarts at once.

    wh (float64[N, 2], normalised) is the same array ``partitions`` holds (the k-means++ draws run
    on the driver over all of it, as the library does). Each (k, restart) Lloyd loop runs on its own
    driver thread with its own :class:`RayMapper`; restart i of every k starts from the library's
    ``restart_seeds(seed, n_init)[i]``, and the winner is chosen by ``best_result`` in restart order,
    so each result equals the sequential single-process one bit for bit. ``progress``: progress lines,
    counting finished Lloyd loops (the number of iterations of each is not known in advance).
    """
    wh = anchors_lib.validate_shapes(wh)
    if len(wh) != partitions.num_boxes:
        raise ConfigError(f"parallel_kmeans: {len(wh)} boxes but the partitions hold {partitions.num_boxes}")
    seeds = anchors_lib.restart_seeds(seed, n_init)
    jobs = [(int(k), i) for k in ks for i in range(n_init)]

    def one_restart(job: tuple[int, int]) -> anchors_lib.AnchorResult:
        k, i = job
        init = anchors_lib.kmeans_pp_init(wh, k, np.random.default_rng(seeds[i]), partitions.backend)
        return anchors_lib.lloyd(init, RayMapper(partitions), max_iter, update)

    if not jobs:
        return {}
    results: dict[int, anchors_lib.AnchorResult] = {}  # by position in jobs
    with (
        ThreadPoolExecutor(max_workers=min(len(jobs), 64), thread_name_prefix="lloyd") as pool,
        Progress("anchors", len(jobs), "runs", desc="k-means", enabled=progress, heartbeat=progress) as bar,
    ):
        position = {pool.submit(one_restart, job): i for i, job in enumerate(jobs)}
        for future in as_completed(position):
            results[position[future]] = future.result()
            bar.advance()
    by_k: dict[int, list[anchors_lib.AnchorResult]] = {}
    for i, (k, _) in enumerate(jobs):
        by_k.setdefault(k, []).append(results[i])
    return {k: anchors_lib.best_result(rs) for k, rs in by_k.items()}


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


def darknet_anchors_line(anchors_grid: np.ndarray) -> str:
    """``anchors=w1,h1, w2,h2, ...`` in grid cells (6 significant digits, as Darknet's own cfgs)."""
    return "anchors=" + ", ".join(f"{w:.6g},{h:.6g}" for w, h in np.asarray(anchors_grid, np.float64))


def pinned_anchors(pinned: Sequence[Sequence[float]], input_size: int) -> np.ndarray:
    """``anchors.pinned`` (grid cells, Darknet's units) checked: float64[k, 2], every size finite and > 0."""
    arr = np.asarray(pinned, dtype=np.float64) if len(pinned) else np.zeros((0, 2))
    if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) == 0:
        raise ConfigError(f"anchors.pinned: expected a non-empty list of [w, h] pairs (grid cells), got {pinned!r}")
    if not (np.isfinite(arr).all() and (arr > 0).all()):
        raise ConfigError(f"anchors.pinned: every width and height must be a positive number, got {arr.tolist()}")
    if len(arr) > anchors_lib.MAX_K:
        raise ConfigError(f"anchors.pinned: at most {anchors_lib.MAX_K} anchors, got {len(arr)}")
    anchors_lib.to_grid_units(arr, input_size, STRIDE)  # checks train.input_size is a multiple of the stride
    return arr


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def read_box_shapes(ctx: StageContext) -> np.ndarray:
    """Normalised training box shapes float64[N, 2] from the shard stage's train index (crowd excluded)."""
    shard_result = ctx.upstream["shard"]
    splits = shard_result.manifest["splits"]
    if "train" not in splits:
        raise DatasetError(
            f"anchors: the shard stage has no 'train' split (it has {', '.join(splits) or 'none'}); "
            "add one to data.splits, e.g. data.splits={train: [train]}"
        )
    name = splits["train"]["index"]
    table = ctx.workspace.read_parquet(shard_result.output_dir, name)
    wh = anchors_lib.box_shapes_from_table(table, include_difficult=ctx.cfg.anchors.include_difficult)
    return anchors_lib.validate_shapes(wh, source=ctx.workspace.uri_of(shard_result.output_dir, name))


def _cluster(
    wh: np.ndarray, cfg: PipelineConfig
) -> tuple[anchors_lib.AnchorResult, dict[int, anchors_lib.AnchorResult], dict[str, Any]]:
    """Ray k-means for ``anchors.k`` and the k = 1..10 table (only k up to the number of distinct shapes)."""
    settings = cfg.anchors
    distinct = len(np.unique(wh, axis=0))
    if isinstance(settings.k, int) and settings.k > distinct:
        raise ConfigError(
            f"anchors.k={settings.k} is larger than the number of distinct training box shapes ({distinct} in "
            f"{len(wh)} boxes); lower anchors.k, or pin anchors with anchors.pinned"
        )
    table_ks = [k for k in TABLE_KS if k <= distinct]
    ks = sorted(set(table_ks) | {settings.k})
    block_size = stage_block_size(len(wh), settings.partitions)
    partitions = RayPartitions.put(wh, settings.partitions, block_size)
    started = time.time()
    results = parallel_kmeans(
        wh, partitions, ks, settings.seed, settings.n_init, settings.max_iter, settings.update, progress=True
    )
    info = {
        "partitions": len(partitions.bounds),
        "block_size": block_size,
        "distinct_shapes": distinct,
        "table_skipped_ks": [k for k in TABLE_KS if k > distinct],
        "lloyd_runs": len(ks) * settings.n_init,
        "clustering_seconds": round(time.time() - started, 3),
    }
    return results[settings.k], {k: results[k] for k in table_ks}, info


def anchors_body(ctx: StageContext) -> dict[str, Any]:
    cfg = ctx.cfg
    settings = cfg.anchors
    input_size = cfg.train.input_size
    wh = read_box_shapes(ctx)
    started = time.time()
    if settings.pinned:
        anchors_grid = pinned_anchors(settings.pinned, input_size)
        anchors_norm = anchors_lib.from_grid_units(anchors_grid, input_size, STRIDE)
        mean_iou = anchors_lib.mean_iou(wh, anchors_norm)
        k = len(anchors_grid)
        table: dict[int, float] = {}
        by_k: dict[int, list[list[float]]] = {}
        clustering: dict[str, Any] = {"pinned": True, "iterations": 0, "converged": None}
        log.info(
            "anchors: pinned (%d anchors from the config), clustering skipped; mean IoU %.4f on %d boxes",
            k,
            mean_iou,
            len(wh),
        )
    else:
        result, results_by_k, info = _cluster(wh, cfg)
        table = {kk: r.mean_iou for kk, r in results_by_k.items()}
        by_k = {kk: anchors_lib.to_grid_units(r.anchors, input_size, STRIDE).tolist() for kk, r in results_by_k.items()}
        anchors_norm = result.anchors
        anchors_grid = anchors_lib.to_grid_units(anchors_norm, input_size, STRIDE)
        mean_iou, k = result.mean_iou, settings.k
        clustering = {
            "pinned": False,
            "iterations": result.iterations,
            "converged": result.converged,
            "restart": result.restart,
            "counts": result.counts.tolist(),
            "seed": settings.seed,
            "n_init": settings.n_init,
            "max_iter": settings.max_iter,
            "update": settings.update,
            "history": list(result.history),
            **info,
        }
        log.info(
            "anchors: k=%d mean IoU %.4f on %d boxes (%d iterations, restart %d, %d partitions, %.1fs)",
            k,
            mean_iou,
            len(wh),
            result.iterations,
            result.restart,
            info["partitions"],
            info["clustering_seconds"],
        )
    seconds = time.time() - started

    document = {
        "anchors": anchors_grid.tolist(),
        "units": f"grid cells at stride {STRIDE} for input size {input_size} (Darknet anchors=)",
        "anchors_normalised": np.asarray(anchors_norm).tolist(),
        "mean_iou": mean_iou,
        "k": k,
        "input_size": input_size,
        "stride": STRIDE,
        "num_boxes": len(wh),
        "include_difficult": settings.include_difficult,
        "iou_table": [{"k": kk, "mean_iou": v} for kk, v in sorted(table.items())],
        "anchors_by_k": {str(kk): v for kk, v in sorted(by_k.items())},  # the table's anchors (the tune stage's k)
        "darknet": darknet_anchors_line(anchors_grid),
        **clustering,
        "seconds": round(seconds, 3),
    }
    ctx.workspace.write_json(document, ctx.out(ANCHORS_FILE))
    wh_grid = anchors_lib.to_grid_units(wh, input_size, STRIDE)
    title = f"Anchors for input {input_size} ({len(wh)} training boxes)" + (" - pinned" if settings.pinned else "")
    png = figure_png(anchors_figure(wh_grid, anchors_grid, table, k, mean_iou, title, seed=settings.seed))
    ctx.workspace.write_bytes(png, ctx.out(PLOT_FILE))

    ctx.log_params(
        {
            "anchors.partitions_used": clustering.get("partitions", 0),
            "anchors.block_size": clustering.get("block_size", 0),
            "anchors.pinned_used": bool(settings.pinned),
        }
    )
    ctx.log_metrics({"mean_iou": mean_iou, "iterations": clustering["iterations"], "num_boxes": len(wh)})
    for kk, v in sorted(table.items()):
        ctx.log_metrics({"mean_iou_by_k": v}, step=kk)
    ctx.log_artifact_bytes(png, PLOT_FILE)
    ctx.log_artifact_bytes(ctx.workspace.read_bytes(ctx.out(ANCHORS_FILE)), ANCHORS_FILE)
    log.info("anchors: %s", document["darknet"])
    return {
        "anchors": document["anchors"],
        "mean_iou": mean_iou,
        "k": k,
        "input_size": input_size,
        "num_boxes": len(wh),
        "pinned": bool(settings.pinned),
        "darknet": document["darknet"],
        "anchors_by_k": document["anchors_by_k"],
        "files": {"anchors": ANCHORS_FILE, "plot": PLOT_FILE},
    }


SPEC = StageSpec(
    name="anchors",
    upstream=(shard.SPEC,),
    config_keys=("anchors", "train.input_size"),
    version=2,
    body=anchors_body,
    summary="k-means anchor shapes (1 - IoU distance) from the training split's box table, on Ray tasks",
)


if __name__ == "__main__":
    raise SystemExit(stage_main(SPEC))
