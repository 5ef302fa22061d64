"""Run the bad-input corpus through the real pipeline path and observe what happened to each case.

The path is the one users run: the ``prepare`` stage with ``data.root`` on a corpus folder, then the
``shard`` stage on the running Ray instance (tracking off). Every case is its own split, so one shard
run covers a whole layout and still reports per case: the manifest's per-split counts, the split's
index Parquet (what was sharded) and ``rejects.parquet`` (what was not, and why).

:func:`observe` reads only those outputs and the source files, never the readers, so the test and
``benchmarks/reliability.py`` compare what the stage *did* with what :class:`Case` says it must do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from corpus.generate import CLASS_NAMES, Case, Layout

JPEG_SOI = b"\xff\xd8\xff"


@dataclass
class ShardRun:
    """One prepare + shard run: its workspace and stage result, or the error it raised."""

    workspace: Any  # pipelines.workspace.Workspace
    config: Any  # yolov2.config.PipelineConfig
    result: Any = None  # pipelines.dag.StageResult
    error: BaseException | None = None


@dataclass
class Observation:
    """What the stage did with one case (see :func:`observe`)."""

    outcome: str  # kept, converted, clipped, rejected, error
    level: str | None = None  # for rejected: image when any image-level reject, else box
    images_in: int = 0  # the manifest's count for the split
    sharded: int = 0  # rows of the split's index
    image_rejects: list[str] = field(default_factory=list)  # reasons
    box_rejects: list[str] = field(default_factory=list)
    clipped: int = 0
    sizes_from_image: int = 0  # the manifest's repair counts for the split
    trailing_data: int = 0
    accounted: bool | None = None  # images_in == sharded + image-level rows of rejects.parquet; None on error
    records: list[dict] = field(default_factory=list)  # the index rows (records with shard and key)
    samples: dict[str, bytes] = field(default_factory=dict)  # image_id -> image bytes in the shard
    error: str | None = None


def corpus_config(workspace: Path, layout: Layout, root: Path, splits: Sequence[str], strict: bool = False):
    """The pipeline config for a corpus layout: each split of ours is the dataset split of the same name."""
    from pipelines.config import load_config

    overrides = [
        f"workspace={workspace}",
        f"data.kind={layout}",
        f"data.root={root}",
        f"data.strict={str(strict).lower()}",
    ]
    if layout != "coco":  # COCO cases carry coco_tiny's categories in every file
        overrides.append(f"data.class_names=[{', '.join(CLASS_NAMES)}]")
    cfg = load_config(None, overrides)
    cfg.data.splits = {s: [s] for s in splits}
    return cfg


def run_shard(workspace: Path, layout: Layout, root: Path, splits: Sequence[str], strict: bool = False) -> ShardRun:
    """prepare (``data.root``) + shard on the running Ray instance; a DatasetError is kept, not raised."""
    from pipelines import prepare, shard
    from pipelines.dag import run_stage
    from pipelines.workspace import Workspace
    from yolov2.errors import DatasetError

    cfg = corpus_config(workspace, layout, root, splits, strict)
    ws = Workspace.open(cfg.workspace)
    run = ShardRun(ws, cfg)
    prepared = run_stage(prepare.SPEC, cfg, ws, tracking_enabled=False)
    try:
        run.result = run_stage(shard.SPEC, cfg, ws, upstream={"prepare": prepared}, force=True, tracking_enabled=False)
    except DatasetError as e:  # under Ray a task's DatasetError arrives as RayTaskError(DatasetError)
        run.error = e
    return run


def error_message(error: BaseException) -> str:
    """The DatasetError's own message (a Ray task error wraps it after the remote traceback)."""
    text = str(error).strip()
    marker = "DatasetError: "
    return text[text.rindex(marker) + len(marker) :] if marker in text else text


def observe(run: ShardRun, case: Case) -> Observation:
    """Classify what the run did with ``case`` from the stage outputs and the source files alone."""
    if run.error is not None:
        return Observation("error", error=error_message(run.error))
    ws, result, split = run.workspace, run.result, case.split
    folder = ws.local_path(result.output_dir)
    summary = result.manifest["splits"][split]
    index = pq.read_table(folder / f"{split}-index.parquet").to_pylist()
    rejects = [r for r in pq.read_table(folder / "rejects.parquet").to_pylist() if r["split"] == split]
    obs = Observation("kept", images_in=summary["images_in"], sharded=len(index), records=index)
    obs.image_rejects = [r["reason"] for r in rejects if r["level"] == "image"]
    obs.box_rejects = [r["reason"] for r in rejects if r["level"] == "box"]
    obs.clipped = sum(r["clipped_boxes"] for r in index)
    obs.sizes_from_image, obs.trailing_data = summary["sizes_from_image"], summary["jpeg_trailing_data"]
    in_manifest = summary["images"] + summary["rejected_images"]
    obs.accounted = summary["images_in"] == len(index) + len(obs.image_rejects) == in_manifest
    obs.samples = _shard_images(folder, summary["shards"])
    converted = any(obs.samples.get(r["image_id"]) != Path(r["path"]).read_bytes() for r in index)
    if obs.image_rejects:
        obs.outcome, obs.level = "rejected", "image"
    elif obs.box_rejects:
        obs.outcome, obs.level = "rejected", "box"
    elif obs.clipped:
        obs.outcome = "clipped"
    elif converted:
        obs.outcome = "converted"
    return obs


def _shard_images(folder: Path, shards: list[str]) -> dict[str, bytes]:
    from yolov2.data.shards import iter_shard_samples

    if not shards:
        return {}
    return {record.image_id: data for _, data, record in iter_shard_samples([str(folder / s) for s in shards])}


def matches(case: Case, obs: Observation) -> list[str]:
    """The ways an observation departs from the case's expected outcome (empty when it matches).

    Checks outcome, level, counts, reasons, repair counts and the count invariant; the box
    coordinates and pixels are checked by the test itself.
    """
    problems = []
    if obs.outcome != case.outcome:
        problems.append(f"outcome {obs.outcome} (expected {case.outcome})")
    if case.outcome == "error":
        if case.reason not in (obs.error or ""):
            problems.append(f"error {obs.error!r} lacks {case.reason!r}")
        return problems
    if obs.level != case.level:
        problems.append(f"level {obs.level} (expected {case.level})")
    if obs.images_in != case.images_in:
        problems.append(f"images in {obs.images_in} (expected {case.images_in})")
    if not obs.accounted:
        problems.append("records in != sharded + rejected")
    want_ids = [case.image_id] if case.image_id is not None else []
    if [r["image_id"] for r in obs.records] != want_ids:
        problems.append(f"sharded {[r['image_id'] for r in obs.records]} (expected {want_ids})")
    by_level = {"image": obs.image_rejects, "box": obs.box_rejects}
    got = by_level.get(case.level, [])
    others = [r for level, reasons in by_level.items() if level != case.level for r in reasons]
    if len(got) != case.rejects or others:
        everything = obs.image_rejects + obs.box_rejects
        problems.append(f"rejects {everything} (expected {case.rejects} at level {case.level})")
    if any(case.reason not in r for r in got):
        problems.append(f"a reason lacks {case.reason!r}: {got}")
    if obs.clipped != case.clipped:
        problems.append(f"clipped {obs.clipped} (expected {case.clipped})")
    if (obs.sizes_from_image, obs.trailing_data) != (case.sizes_from_image, case.trailing_data):
        problems.append(
            f"repairs counted: {obs.sizes_from_image} sizes from the image, {obs.trailing_data} JPEGs with "
            f"trailing data (expected {case.sizes_from_image}, {case.trailing_data})"
        )
    return problems


def rejected(obs: Observation) -> bool:
    """Whether the non-strict run turned anything of the case down: an image, a box, or the whole file."""
    return obs.outcome in ("rejected", "error")
