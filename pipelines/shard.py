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

Before listing, the class names are resolved (``data.class_names``, or ``auto``: from the dataset,
:mod:`yolov2.data.class_names`), logged and recorded with their source (``class_names_source``). With
the user's own list, more than half of the boxes outside it stops the stage, naming those classes (VOC:
from a scan of the annotation XMLs before any shard is written; COCO, YOLO: from the readers' rejects),
unless ``data.skip_unknown_classes``; a split whose every image ends with no box is an error. With
``data.val_fraction`` a ``val`` split is carved out of train by image id (``splits.val.carved_from``).

Run alone: ``python -m pipelines.shard --config configs/demo.yaml``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipelines import prepare, ray_tasks
from pipelines.cli_common import stage_main
from pipelines.dag import StageContext, StageSpec
from pipelines.faults import FaultPlan, shard_write_fault
from pipelines.workspace import Workspace
from yolov2.data.class_names import (
    ClassNames,
    check_split_has_boxes,
    check_unknown_classes,
    check_unknown_classes_early,
    resolve_class_names,
    unknown_class_counts,
)
from yolov2.data.records import ImageRecord, Reject, records_to_table, rejects_to_table
from yolov2.data.shard_build import ShardItem, ShardOptions, write_shard
from yolov2.data.sources import CLASS_ONLY_SPLIT, list_class_only, list_splits
from yolov2.errors import DatasetError
from yolov2.progress import Progress

log = logging.getLogger(__name__)


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
    (:class:`~yolov2.data.shard_build.ShardOutcome`)."""

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


def _remote_write_shard(
    workspace: Workspace,
    shard_path: str,
    plan: PlannedShard,
    options: ShardOptions,
    class_names: list[str],
    faults: FaultPlan,
) -> ShardIndexPart:
    """One shard task. ``plan`` travels as one object, not as a list: Ray pickles a list argument element by
    element, which would repeat the items' shared parts (root, class names, reader) once per image.
    ``faults`` (the fault tests): the first attempt may die after writing the data, before the rename."""
    shard_name = shard_path.rsplit("/", 1)[-1]
    with workspace.atomic_output(shard_path) as stream:
        outcome = write_shard(stream, plan.items, options, shard_name=shard_name)
        shard_write_fault(faults, shard_path)
    index = index_table(outcome.records, outcome.keys, shard_name, class_names)
    return ShardIndexPart(
        index, outcome.rejects, outcome.bytes_written, outcome.sizes_from_image, outcome.trailing_data
    )


def _spread_strategies(count: int) -> list[Any]:
    """Ray scheduling strategies for ``count`` shard tasks: the first task on each alive node that has a CPU
    is pinned there (softly: it moves if that node goes), every other task uses SPREAD.

    Shard writing is I/O-bound work that should use every node's disks and CPUs. SPREAD alone is decided per
    worker lease, and Ray reuses a busy lease for the next queued task of the same function while the lease
    is younger than 0.5 s (worker_lease_timeout_milliseconds): shard tasks shorter than a worker's start-up
    on another node (small datasets) all ran, back to back, on the driver's node. A pinned task waits for its
    own node's worker instead; the SPREAD rest still balances over whichever workers are free.
    """
    nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= 1)
    pinned: list[Any] = [NodeAffinitySchedulingStrategy(node, soft=True) for node in nodes[:count]]
    return pinned + ["SPREAD"] * (count - len(pinned))


def _run_shard_tasks(
    ctx: StageContext, planned: list[PlannedShard], options: ShardOptions, class_names: list[str]
) -> list[ShardIndexPart]:
    remote = ray.remote(num_cpus=1, max_retries=3)(_remote_write_shard)
    refs = [
        remote.options(scheduling_strategy=strategy).remote(
            ctx.workspace, ctx.out(p.name), p, options, class_names, ctx.faults
        )
        for p, strategy in zip(planned, _spread_strategies(len(planned)))
    ]
    with Progress(SPEC.name, sum(len(p.items) for p in planned), "images", heartbeat=True) as progress:
        return ray_tasks.gather(refs, [len(p.items) for p in planned], progress)


# the per-split counts logged as metrics (not the carve-out's fraction and seed)
COUNTS = (
    "images_in",
    "images",
    "boxes",
    "clipped_boxes",
    "rejected_images",
    "rejected_boxes",
    "sizes_from_image",
    "jpeg_trailing_data",
    "bytes",
)


def shard_body(ctx: StageContext) -> dict[str, Any]:
    cfg, data = ctx.cfg, ctx.cfg.data
    prepared = ctx.upstream["prepare"].manifest
    options = ShardOptions(
        reencode=cfg.shard.reencode,
        max_side=cfg.shard.max_side,
        jpeg_quality=cfg.shard.jpeg_quality,
        strict=data.strict,
        max_pixels=data.max_image_pixels,
    )
    started = time.time()
    names = resolve_class_names(prepared, data.class_names, data.splits)
    log.info("%s", names.describe())
    ctx.log_params({"class_names.count": len(names.names), "class_names.source": names.source})
    class_names = list(names.names)
    check_unknown_classes_early(prepared, data.splits, names, data.skip_unknown_classes)  # VOC: before any shard
    listings = list_splits(prepared, data.splits, class_names, data.strict, data.val_fraction, data.val_seed)
    if data.class_only_root:
        listings[CLASS_ONLY_SPLIT], class_names = list_class_only(
            data.class_only_root, class_names, data.strict, data.max_image_pixels
        )
        log.info(
            "classification-only samples: %d images of %d classes from %s",
            len(listings[CLASS_ONLY_SPLIT].items),
            len(class_names) - len(names.names),
            data.class_only_root,
        )
    ctx.log_artifact_bytes(("\n".join(class_names) + "\n").encode(), "classes.names")  # a Darknet .names file
    all_rejects: list[Reject] = []
    planned: list[PlannedShard] = []
    items_in: dict[str, int] = {}
    for split, listing in listings.items():
        all_rejects.extend(listing.rejects)
        items_in[split] = len(listing.items) + sum(r.level == "image" for r in listing.rejects)
        planned.extend(plan_shards(split, listing.items, cfg.shard.max_count, cfg.shard.max_bytes))

    outcomes = _run_shard_tasks(ctx, planned, options, class_names)
    orphans = ctx.workspace.remove_temp_files(ctx.output_dir)  # left by killed attempts
    if orphans:
        log.warning("removed %d temp file(s) left by interrupted shard tasks", orphans)

    summary: dict[str, Any] = {"splits": {}, "class_names": class_names, "class_names_source": names.source}
    total_images = 0
    total_bytes = 0
    for split in listings:
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
    if data.val_fraction > 0:
        summary["splits"]["val"].update(carved_from="train", fraction=data.val_fraction, seed=data.val_seed)
    ctx.workspace.write_parquet(rejects_to_table(all_rejects), ctx.out("rejects.parquet"))
    _check_boxes(summary["splits"], all_rejects, names, data.skip_unknown_classes)
    seconds = time.time() - started
    summary["rejects"] = "rejects.parquet"
    summary["images_per_second"] = total_images / max(seconds, 1e-9)

    for split, split_summary in summary["splits"].items():
        ctx.log_metrics({f"{split}.{key}": split_summary[key] for key in COUNTS})
    ctx.log_metrics(
        {"images_per_second": summary["images_per_second"], "bytes": total_bytes, "rejects": len(all_rejects)}
    )
    if all_rejects:
        ctx.log_artifact_bytes(_rejects_text(all_rejects), "rejects.txt")
    log.info("sharded %d images (%d rejects) in %.1fs", total_images, len(all_rejects), seconds)
    return summary


def _check_boxes(
    splits: dict[str, dict[str, Any]], rejects: list[Reject], names: ClassNames, skip_unknown: bool
) -> None:
    """After sharding: the unknown-class share over every split (COCO and YOLO know it only now), then each
    split must have a box."""
    box_rejects = [r for r in rejects if r.level == "box"]
    kept = sum(s["boxes"] for s in splits.values())
    check_unknown_classes(names, unknown_class_counts(box_rejects), kept + len(box_rejects), skip_unknown)
    for split, s in splits.items():
        check_split_has_boxes(split, s["images"], s["boxes"], [r for r in box_rejects if r.split == split], names)


def _rejects_text(rejects: list[Reject]) -> bytes:
    lines = [f"{r.level}\t{r.split}\t{r.source}\t{r.reason}" for r in rejects]
    return ("\n".join(["level\tsplit\tsource\treason", *lines]) + "\n").encode()


SPEC = StageSpec(
    name="shard",
    upstream=(prepare.SPEC,),
    config_keys=(
        "data.splits",
        "data.class_names",
        "data.skip_unknown_classes",
        "data.val_fraction",
        "data.val_seed",
        "data.strict",
        "data.max_image_pixels",
        "data.class_only_root",
        "shard",
    ),
    version=2,  # 2: class names resolved here (auto), unknown-class and empty-split checks, the val carve-out
    body=shard_body,
    summary="Ray tasks turn the prepared dataset into WebDataset tar shards and an index per split",
)


if __name__ == "__main__":
    raise SystemExit(stage_main(SPEC))
