"""The pretrain stage's data: labelled images written as classification shards (:mod:`yolov2.data.cls_shards`)
by Ray tasks.

Sources (``pretrain.source``):

* ``crops``: the shard stage's training boxes. The crop rectangles come from its index alone
  (:func:`yolov2.data.crops.record_crops`: margin, minimum side, no difficult boxes); one task per detection
  shard decodes its images and cuts them.
* ``imagefolder``: ``pretrain.root/<class>/*.jpg`` (:func:`yolov2.data.imagefolder.scan_image_folder`, bad
  files as named rejects); tasks decode and re-encode chunks of files.
* ``synthetic``: the shapes of ``data.synthetic``'s generator, on images of their own; tasks draw them again
  (the generator is seeded per image) and cut their shapes out.

The driver plans everything before a task runs, the stratified val split included
(:func:`yolov2.data.cls_shards.stratified_val`), so shard contents never depend on scheduling. Task ``i``
writes ``train-<i>.tar`` and ``val-<i>.tar`` (atomic writes: a retried task rewrites the same bytes).
Counting: boxes (or files) in == samples + rejects, by split, in the manifest and ``rejects.parquet``.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import ray

from pipelines import ray_tasks
from pipelines.config import PipelineConfig
from pipelines.dag import StageContext, StageResult
from pipelines.workspace import Workspace
from yolov2.data.cls_shards import cls_shard_bytes, encode_jpeg, iter_cls_shard, stratified_val
from yolov2.data.crops import CropSettings, ObjectCrop, cut_crop, record_crops
from yolov2.data.imagefolder import scan_image_folder
from yolov2.data.images import decode_rgb
from yolov2.data.records import ImageRecord, Reject, rejects_to_table, table_to_records
from yolov2.data.shards import iter_shard_samples
from yolov2.data.synthetic import SHAPE_CLASSES, SyntheticScene, generate_scene
from yolov2.errors import DatasetError
from yolov2.progress import Progress

log = logging.getLogger(__name__)
SPLITS = ("train", "val")
REJECTS_FILE = "rejects.parquet"
SYNTHETIC_CHUNK = 100  # generated images per task
FILES_CHUNK = 500  # imagefolder files per task
JPEG_QUALITY = 95


@dataclass(frozen=True)
class Sample:
    """One planned sample: its key, class and split, and where its pixels come from in its group: a crop of
    the group's image ``image`` (crops, synthetic), or the whole file (imagefolder: ``crop`` is None)."""

    key: str
    label: int
    split: str
    image: str  # detection shard key, generated image index, or file path
    crop: ObjectCrop | None


@dataclass
class Group:
    """One task's work: the samples it writes (to ``train-<index>.tar`` / ``val-<index>.tar``)."""

    index: int
    source: str  # a detection shard url (crops), "synthetic", or "files"
    samples: list[Sample] = field(default_factory=list)


@dataclass
class Plan:
    class_names: list[str]
    groups: list[Group]
    rejects: list[Reject]
    inputs: int  # boxes (crops, synthetic) or files (imagefolder) considered


def plan_dataset(ctx: StageContext) -> Plan:
    """The samples of ``pretrain.source``, split and grouped into tasks, with the rejects found on the way."""
    p = ctx.cfg.pretrain
    settings = CropSettings(margin=p.margin, min_side=p.min_side)
    if p.source == "crops":
        shard: StageResult = ctx.upstream["shard"]
        train = shard.manifest["splits"]["train"]
        index = ctx.workspace.read_parquet(shard.output_dir, train["index"])
        records = table_to_records(index)
        images = [(str(s), str(k)) for s, k in zip(index.column("shard").to_pylist(), index.column("key").to_pylist())]
        planned = _crop_plan(records, [k for _, k in images], settings)
        groups = _group_by(planned, {k: s for s, k in images}, ctx.workspace, shard.output_dir)
        return _split(
            Plan(shard.manifest["class_names"], groups, planned.rejects, planned.inputs), p.val_fraction, p.seed
        )
    if p.source == "synthetic":
        records = [_synthetic_scene(ctx.cfg, i).record for i in range(p.synthetic_images)]
        planned = _crop_plan(records, [str(i) for i in range(len(records))], settings)
        chunks = {str(i): f"synthetic-{i // SYNTHETIC_CHUNK}" for i in range(len(records))}
        groups = _group_by(planned, chunks, None, "")
        return _split(Plan(list(SHAPE_CLASSES), groups, planned.rejects, planned.inputs), p.val_fraction, p.seed)
    scan = scan_image_folder(
        p.root, split="train", strict=ctx.cfg.data.strict, max_pixels=ctx.cfg.data.max_image_pixels
    )
    if not scan.samples:
        raise DatasetError(f"{p.root}: no usable image in any class folder ({len(scan.rejects)} rejected)")
    samples = [Sample(f"c{s.label:04d}_{i:08d}", s.label, "train", s.path, None) for i, s in enumerate(scan.samples)]
    groups = [
        Group(i // FILES_CHUNK, "files", samples[i : i + FILES_CHUNK]) for i in range(0, len(samples), FILES_CHUNK)
    ]
    plan = Plan(list(scan.class_names), groups, list(scan.rejects), len(samples) + len(scan.rejects))
    return _split(plan, p.val_fraction, p.seed)


@dataclass
class _CropPlan:
    samples: list[Sample]
    rejects: list[Reject]
    inputs: int


def _crop_plan(records: list[ImageRecord], image_keys: list[str], settings: CropSettings) -> _CropPlan:
    samples: list[Sample] = []
    rejects: list[Reject] = []
    for record, image_key in zip(records, image_keys):
        crops, dropped = record_crops(record, settings)
        rejects.extend(dropped)
        for crop in crops:
            key = f"{image_key.replace('/', '-')}_b{crop.box_index:04d}"
            samples.append(Sample(key, crop.label, "train", image_key, crop))
    return _CropPlan(samples, rejects, sum(r.num_boxes for r in records))


def _group_by(planned: _CropPlan, group_of: dict[str, str], workspace: Workspace | None, folder: str) -> list[Group]:
    """One group per detection shard (or generated chunk), in the order the groups first appear."""
    groups: dict[str, Group] = {}
    for sample in planned.samples:
        name = group_of[sample.image]
        if name not in groups:
            source = workspace.uri_of(folder, name) if workspace else "synthetic"
            groups[name] = Group(len(groups), source)
        groups[name].samples.append(sample)
    return list(groups.values())


def _split(plan: Plan, fraction: float, seed: int) -> Plan:
    every = [s for g in plan.groups for s in g.samples]
    is_val = stratified_val([s.key for s in every], [s.label for s in every], fraction, seed)
    chosen = iter(is_val)
    for group in plan.groups:
        group.samples = [
            Sample(s.key, s.label, "val" if next(chosen) else "train", s.image, s.crop) for s in group.samples
        ]
    return plan


def _synthetic_scene(cfg: PipelineConfig, index: int) -> SyntheticScene:
    """Generated image ``index`` of the pretrain source (seeded: the plan and the task draw the same one)."""
    s = cfg.data.synthetic
    return generate_scene(
        s.seed + 1,
        index,
        "pretrain",
        *s.image_size,
        s.max_objects,
        min_size=s.min_object_size,
        min_visible=s.min_visible,
    )


@dataclass
class GroupOutcome:
    index: int
    counts: dict[str, Counter]  # split -> class index -> samples written
    rejects: list[Reject]


def write_group(workspace: Workspace, output_dir: str, group: Group, cfg: PipelineConfig) -> GroupOutcome:
    """One task: the group's samples cut (or decoded), JPEG-encoded, written as ``<split>-<index>.tar``."""
    by_split: dict[str, list[tuple[str, bytes, int]]] = {s: [] for s in SPLITS}
    rejects: list[Reject] = []
    for image, samples in _images_of(group, cfg, rejects):
        for sample in samples:
            pixels = cut_crop(image, sample.crop) if sample.crop is not None else image
            by_split[sample.split].append((sample.key, encode_jpeg(pixels, JPEG_QUALITY), sample.label))
    counts = {}
    for split, items in by_split.items():
        workspace.write_bytes(cls_shard_bytes(items), output_dir, shard_name(split, group.index))
        counts[split] = Counter(label for _, _, label in items)
    return GroupOutcome(group.index, counts, rejects)


def _images_of(group: Group, cfg: PipelineConfig, rejects: list[Reject]):
    """(decoded image, its samples) for each image of the group; an image that fails to decode rejects its
    samples, named."""
    wanted: dict[str, list[Sample]] = {}
    for sample in group.samples:
        wanted.setdefault(sample.image, []).append(sample)
    if group.source == "synthetic":
        for image_key, samples in wanted.items():
            yield _synthetic_scene(cfg, int(image_key)).image, samples
    elif group.source == "files":
        for path, samples in wanted.items():
            try:
                with open(path, "rb") as f:
                    yield decode_rgb(f.read(), path), samples
            except (OSError, DatasetError) as e:
                rejects.extend(Reject(path, f"cannot decode: {e}", "image", s.key, s.split) for s in samples)
    else:
        for key, image_bytes, _ in iter_shard_samples(group.source):
            if key in wanted:
                yield decode_rgb(image_bytes, f"{group.source}:{key}"), wanted.pop(key)
        for key, samples in wanted.items():
            rejects.extend(
                Reject(group.source, f"image {key} is not in the shard", "image", key, "train") for _ in samples
            )


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def build_dataset(ctx: StageContext) -> dict[str, Any]:
    """Plan, write every group by a Ray task (progress by samples), write ``rejects.parquet``; the dataset's
    part of the manifest: class names, shards and counts per split, rejects, inputs."""
    plan = plan_dataset(ctx)
    if not plan.groups:
        raise DatasetError(
            f"pretrain: {plan.inputs} inputs gave no sample ({len(plan.rejects)} rejected); see {REJECTS_FILE}"
        )
    remote = ray.remote(num_cpus=1, max_retries=3)(write_group)
    refs = [remote.remote(ctx.workspace, ctx.output_dir, g, ctx.cfg) for g in plan.groups]
    sizes = [len(g.samples) for g in plan.groups]
    with Progress("pretrain data", sum(sizes), "samples", heartbeat=True) as progress:
        outcomes: list[GroupOutcome] = ray_tasks.gather(refs, sizes, progress)  # in group order
    rejects = plan.rejects + [r for o in outcomes for r in o.rejects]
    ctx.workspace.write_parquet(rejects_to_table(rejects), ctx.out(REJECTS_FILE))
    splits = {}
    for split in SPLITS:
        per_class = sum((o.counts[split] for o in outcomes), Counter())
        splits[split] = {
            "shards": [shard_name(split, o.index) for o in outcomes],
            "counts": [sum(o.counts[split].values()) for o in outcomes],
            "samples": sum(per_class.values()),
            "per_class": {plan.class_names[c]: n for c, n in sorted(per_class.items())},
        }
    if not splits["train"]["samples"] or not splits["val"]["samples"]:
        raise DatasetError(
            f"pretrain: the {ctx.cfg.pretrain.source} source gave too few samples for a val split: {splits}"
        )
    log.info(
        "pretrain data: %d train and %d val samples of %d classes from %d %s (%d rejected)",
        splits["train"]["samples"],
        splits["val"]["samples"],
        len(plan.class_names),
        plan.inputs,
        "files" if ctx.cfg.pretrain.source == "imagefolder" else "boxes",
        len(rejects),
    )
    return {"class_names": plan.class_names, "splits": splits, "inputs": plan.inputs, "rejected": len(rejects)}


def read_split(workspace: Workspace, output_dir: str, dataset: dict[str, Any], split: str):
    """Every ``(key, jpeg bytes, label)`` of a split, shard after shard (for tests and the sample figure)."""
    for name in dataset["splits"][split]["shards"]:
        yield from iter_cls_shard(workspace.uri_of(output_dir, name))
