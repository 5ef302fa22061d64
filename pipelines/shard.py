"""The `shard` stage: Ray tasks turn the prepared VOC/COCO/YOLO dataset into WebDataset tar shards.

Output per split: ``<split>-%06d.tar`` shards, ``<split>-index.parquet`` (every record with its shard
and key: the anchors stage reads only this), and one ``rejects.parquet`` with the reason for every
skipped image or box. The manifest counts, per split, the images in, sharded and rejected, and those
kept after a repair: ``sizes_from_image`` (the annotation gave no size; the image header did) and
``jpeg_trailing_data`` (bytes after the JPEG's end marker, as in motion photos). The shard plan
(which image goes to which shard) is made on the driver from the config and file sizes alone, so
shard names and contents never depend on task scheduling: a
rerun, a retried task or ``--force`` gives byte-identical shards. Each task writes its shard to a
temporary name and renames it, so a killed task leaves no partial shard. Each task sends back its
rows of the index as an Arrow table, not as Python records: the driver only concatenates them, so
its serial share of the stage stays small.

Run alone: ``python pipelines/shard.py --config configs/demo.yaml``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from yolov2.config import PipelineConfig
from yolov2.data.records import ImageRecord, Reject, records_to_table, rejects_to_table
from yolov2.data.shards import ShardItem, ShardOptions, write_shard
from yolov2.data.sources import list_split_items
from yolov2.errors import DatasetError, YoloV2Error
from yolov2.progress import Progress

from pipelines import cli_common
from pipelines.stage import StageContext, StageResult, run_stage
from pipelines.workspace import Workspace

log = logging.getLogger(__name__)
STAGE = "shard"


@dataclass
class PlannedShard:
    split: str
    name: str  # e.g. train-000003.tar
    items: list[ShardItem] = field(default_factory=list)


def plan_shards(split: str, items: list[ShardItem], max_count: int, max_bytes: int) -> list[PlannedShard]:
    """Cut a split's items, in order, into shards of at most ``max_count`` images / ``max_bytes``."""
    shards: list[PlannedShard] = []
    current: PlannedShard | None = None
    current_bytes = 0
    for item in items:
        size = item.source_bytes()
        if current is None or len(current.items) >= max_count or (current.items and current_bytes + size > max_bytes):
            current = PlannedShard(split, f"{split}-{len(shards):06d}.tar")
            shards.append(current)
            current_bytes = 0
        current.items.append(item)
        current_bytes += size
    return shards


@dataclass
class ShardIndexPart:
    """What a shard task reports back: its rows of the split index (records + ``shard`` + ``key``, as Arrow:
    cheap to send and to concatenate), its rejects, the bytes it wrote and its repair counts
    (:class:`~yolov2.data.shards.ShardOutcome`)."""

    index: pa.Table
    rejects: list[Reject]
    bytes_written: int
    sizes_from_image: int = 0
    trailing_data: int = 0


def index_table(records: list[ImageRecord], keys: list[str], shard_name: str, class_names: list[str]) -> pa.Table:
    """Records of one shard -> index rows: the records table plus the ``shard`` and ``key`` columns."""
    table = records_to_table(records, class_names)
    table = table.append_column("shard", pa.array([shard_name] * len(keys), pa.string()))
    return table.append_column("key", pa.array(keys, pa.string()))


def _remote_write_shard(workspace: Workspace, shard_path: str, plan: PlannedShard, options: ShardOptions,
                        class_names: list[str], fault: tuple[str, str] | None) -> ShardIndexPart:
    """One shard task. ``plan`` travels as one object, not as a list: Ray pickles a list argument element by
    element, which would repeat the items' shared parts (root, class names, reader) once per image."""
    shard_name = shard_path.rsplit("/", 1)[-1]
    with workspace.atomic_output(shard_path) as stream:
        outcome = write_shard(stream, plan.items, options, shard_name=shard_name)
        if fault:
            _inject_first_attempt_fault(*fault, shard_path)
    index = index_table(outcome.records, outcome.keys, shard_name, class_names)
    return ShardIndexPart(index, outcome.rejects, outcome.bytes_written, outcome.sizes_from_image,
                          outcome.trailing_data)


def _inject_first_attempt_fault(mode: str, marker_dir: str, shard_path: str) -> None:
    """Test hooks: the first attempt at each shard dies after writing the data but before the rename,
    leaving an orphaned temp file behind. Env YOLOV2_FAULT_SHARD_DIR: the task calls ``os._exit``;
    YOLOV2_FAULT_SHARD_HOLD_DIR: it writes its worker's pid to ``<shard>.pid`` and waits there for the
    test to kill that process with a signal (giving up after 120 s, so a broken test cannot hang)."""
    marker = os.path.join(marker_dir, shard_path.replace("/", "_") + ".attempted")
    if os.path.exists(marker):
        return
    with open(marker, "w") as f:
        f.write("1")
    if mode == "exit":
        os._exit(1)
    pid_file = marker[: -len(".attempted")] + ".pid"
    with open(pid_file + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(pid_file + ".tmp", pid_file)
    time.sleep(120)
    raise RuntimeError(f"fault hook: worker {os.getpid()} writing {shard_path} was not killed within 120 s")


def _spread_strategies(count: int) -> list[Any]:
    """Ray scheduling strategies for ``count`` shard tasks: the first task on each alive node that has a CPU
    is pinned there (softly: it moves if that node goes), every other task uses SPREAD.

    Shard writing is I/O-bound work that should use every node's disks and CPUs. SPREAD alone is decided per
    worker lease, and Ray reuses a busy lease for the next queued task of the same function while the lease
    is younger than 0.5 s (worker_lease_timeout_milliseconds): shard tasks shorter than a worker's start-up
    on another node (small datasets) all ran, back to back, on the driver's node. A pinned task waits for its
    own node's worker instead; the SPREAD rest still balances over whichever workers are free.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= 1)
    pinned: list[Any] = [NodeAffinitySchedulingStrategy(node, soft=True) for node in nodes[:count]]
    return pinned + ["SPREAD"] * (count - len(pinned))


def _run_shard_tasks(ctx: StageContext, planned: list[PlannedShard], options: ShardOptions,
                     class_names: list[str]) -> list[ShardIndexPart]:
    import ray

    fault = _fault_hook_from_env()
    remote = ray.remote(num_cpus=1, max_retries=3)(_remote_write_shard)
    refs = [remote.options(scheduling_strategy=strategy).remote(ctx.workspace, ctx.out(p.name), p, options,
                                                                class_names, fault)
            for p, strategy in zip(planned, _spread_strategies(len(planned)))]
    index_of = {ref: i for i, ref in enumerate(refs)}
    outcomes: list[ShardIndexPart | None] = [None] * len(refs)
    pending = list(refs)
    with Progress(STAGE, sum(len(p.items) for p in planned), "images", heartbeat=True) as progress:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    outcomes[index_of[ref]] = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    _stop_tasks(pending)
                    if isinstance(e.cause, YoloV2Error):  # a clear error (bad input, disk full): without Ray's frames
                        raise e.cause from None
                    raise
                progress.advance(len(planned[index_of[ref]].items))
    return [o for o in outcomes if o is not None]


def _stop_tasks(refs: list) -> None:
    """Cancel the other shard tasks after one failed and wait for them, so none writes after the stage
    has failed (a cancelled task's atomic write removes its temp file)."""
    import ray

    for ref in refs:
        ray.cancel(ref)
    ray.wait(refs, num_returns=len(refs), timeout=60)


def _fault_hook_from_env() -> tuple[str, str] | None:
    """(mode, marker dir) of the test hook named by the environment, if any."""
    if os.environ.get("YOLOV2_FAULT_SHARD_DIR"):
        return "exit", os.environ["YOLOV2_FAULT_SHARD_DIR"]
    if os.environ.get("YOLOV2_FAULT_SHARD_HOLD_DIR"):
        return "hold", os.environ["YOLOV2_FAULT_SHARD_HOLD_DIR"]
    return None


def shard_body(ctx: StageContext) -> dict[str, Any]:
    cfg = ctx.cfg
    prepared = ctx.upstream["prepare"].manifest
    options = ShardOptions(
        reencode=cfg.shard.reencode, max_side=cfg.shard.max_side, jpeg_quality=cfg.shard.jpeg_quality,
        strict=cfg.data.strict, max_pixels=cfg.data.max_image_pixels,
    )
    started = time.time()
    all_rejects: list[Reject] = []
    planned: list[PlannedShard] = []
    class_names: list[str] | None = None
    items_in: dict[str, int] = {}
    for split, dataset_splits in cfg.data.splits.items():
        listing = list_split_items(prepared, split, dataset_splits, cfg.data.class_names, strict=cfg.data.strict)
        class_names = listing.class_names
        all_rejects.extend(listing.rejects)
        items_in[split] = len(listing.items) + sum(r.level == "image" for r in listing.rejects)
        planned.extend(plan_shards(split, listing.items, cfg.shard.max_count, cfg.shard.max_bytes))
    assert class_names is not None

    outcomes = _run_shard_tasks(ctx, planned, options, class_names)
    orphans = ctx.workspace.remove_temp_files(ctx.output_dir)  # left by killed attempts
    if orphans:
        log.warning("removed %d temp file(s) left by interrupted shard tasks", orphans)

    summary: dict[str, Any] = {"splits": {}, "class_names": class_names}
    total_images = 0
    total_bytes = 0
    for split in cfg.data.splits:
        shard_outcomes = [(p, o) for p, o in zip(planned, outcomes) if p.split == split]
        parts = [o.index for _, o in shard_outcomes] or [index_table([], [], "", class_names)]
        table = pa.concat_tables(parts).combine_chunks()  # one chunk: the Parquet layout never depends on the plan
        for _, outcome in shard_outcomes:
            all_rejects.extend(outcome.rejects)
        bytes_written = sum(o.bytes_written for _, o in shard_outcomes)
        ctx.workspace.write_parquet(table, ctx.out(f"{split}-index.parquet"))
        images = table.num_rows
        image_rejects = sum(r.level == "image" and r.split == split for r in all_rejects)
        if items_in[split] != images + image_rejects:  # nothing may be lost silently
            raise DatasetError(
                f"split {split}: {items_in[split]} images in, but {images} sharded + {image_rejects} rejected"
            )
        summary["splits"][split] = {
            "images_in": items_in[split],
            "images": images,
            "boxes": int(pc.sum(pc.list_value_length(table["boxes"])).as_py() or 0),
            "clipped_boxes": int(pc.sum(table["clipped_boxes"]).as_py() or 0),
            "rejected_images": image_rejects,
            "rejected_boxes": sum(r.level == "box" and r.split == split for r in all_rejects),
            "sizes_from_image": sum(o.sizes_from_image for _, o in shard_outcomes),  # no usable size in the annotation
            "jpeg_trailing_data": sum(o.trailing_data for _, o in shard_outcomes),  # kept, bytes after FF D9
            "shards": [p.name for p, _ in shard_outcomes],
            "bytes": bytes_written,
            "index": f"{split}-index.parquet",
        }
        total_images += images
        total_bytes += bytes_written
    ctx.workspace.write_parquet(rejects_to_table(all_rejects), ctx.out("rejects.parquet"))
    seconds = time.time() - started
    summary["rejects"] = "rejects.parquet"
    summary["images_per_second"] = total_images / max(seconds, 1e-9)

    for split, s in summary["splits"].items():
        ctx.log_metrics({f"{split}.{k}": v for k, v in s.items() if isinstance(v, int)})
    ctx.log_metrics({"images_per_second": summary["images_per_second"], "bytes": total_bytes,
                     "rejects": len(all_rejects)})
    if all_rejects:
        ctx.log_artifact_bytes(_rejects_text(all_rejects), "rejects.txt")
    log.info("sharded %d images (%d rejects) in %.1fs", total_images, len(all_rejects), seconds)
    return summary


def _rejects_text(rejects: list[Reject]) -> bytes:
    lines = [f"{r.level}\t{r.split}\t{r.source}\t{r.reason}" for r in rejects]
    return ("\n".join(["level\tsplit\tsource\treason", *lines]) + "\n").encode()


def run(cfg: PipelineConfig, workspace: Workspace, *, upstream: dict[str, StageResult] | None = None,
        force: bool = False, tracking_enabled: bool = True) -> StageResult:
    return run_stage(STAGE, cfg, workspace, shard_body, upstream=upstream, force=force,
                     tracking_enabled=tracking_enabled)


def main(argv: list[str] | None = None) -> int:
    return cli_common.stage_main(STAGE, run, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
