"""The `evaluate` stage: parallel inference over the evaluation split's shards, then VOC and COCO mAP.

Inference is Ray Data ``map_batches`` over ``read_webdataset`` with a pool of actors that each load
the trained model once (``num_gpus`` per actor on a cluster, CPU here). Detections go to
``detections.parquet`` (image id, class, score, box in original-image pixels); then VOC07/VOC12 AP
and COCO mAP (category chunks evaluated by Ray tasks), ``metrics.json``, and the per-class table,
PR curves, confusion matrix, error breakdown and sample images as MLflow artifacts.

Which model: ``evaluate.checkpoint``. ``best`` (the default) is training's ``best.pt``, the epoch with the best
VOC07 mAP@0.5 on the val split; with no val split there is no ``best.pt`` and the last model is evaluated, as
a log line says. ``last`` is ``model.pt``, the last epoch's. Never chosen by the evaluated split's metrics. The
manifest (``checkpoint``) and the run's params (``checkpoint.*``) say which was evaluated, its epoch and the
val metric it was chosen by.

Run alone: ``python -m pipelines.evaluate --config configs/demo.yaml``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch

from pipelines import shard
from pipelines.cli_common import stage_main
from pipelines.config import PipelineConfig
from pipelines.dag import StageContext, StageSpec
from pipelines.train import driver as train
from pipelines.train.checkpoints import BEST_BY
from pipelines.workspace import Workspace
from yolov2.config import PredictConfig
from yolov2.data.images import decode_rgb
from yolov2.data.records import ImageRecord, relabel_records, table_to_records
from yolov2.engine.checkpoint import load_checkpoint
from yolov2.engine.precision import choose_precision, detect_hardware
from yolov2.errors import ConfigError
from yolov2.evaluation import compute_metrics, detections_table
from yolov2.inference import ModelSpec, Predictor
from yolov2.metrics import DetectionTable
from yolov2.metrics.figures import evaluation_figures
from yolov2.progress import Progress
from yolov2.wordtree import ancestors_at_depth

log = logging.getLogger(__name__)


class DetectActor:
    """Ray Data actor: loads the model once, turns a batch of shard samples into detection rows."""

    def __init__(
        self,
        workspace: Workspace,
        model_path: str,
        predict: PredictConfig,
        use_gpu: bool,
        amp: str = "auto",
        channels_last: bool | str = "auto",
    ) -> None:
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        precision = choose_precision(detect_hardware(device), amp, channels_last)
        with tempfile.NamedTemporaryFile(suffix=".pt") as local:  # the workspace may be object storage
            local.write(workspace.read_bytes(model_path))
            local.flush()
            self.predictor = Predictor.from_file(local.name, predict, device=device, precision=precision)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = [ImageRecord.from_dict(json.loads(r) if isinstance(r, (bytes, str)) else r) for r in batch["json"]]
        images = [decode_rgb(bytes(data), rec.path) for data, rec in zip(batch["jpg"], records)]
        table = detections_table([r.image_id for r in records], self.predictor(images))
        return _with_tally(
            {
                "image_id": np.asarray(table.image_id, dtype=object),
                "label": table.label.astype(np.int32),
                "score": table.score,
                "x1": table.boxes[:, 0],
                "y1": table.boxes[:, 1],
                "x2": table.boxes[:, 2],
                "y2": table.boxes[:, 3],
                "rank": _rank_within_image(table.image_id),
            },
            len(records),
        )


TALLY_LABEL = -1  # the label of a batch's tally row, never a class


def _with_tally(rows: dict[str, np.ndarray], images: int) -> dict[str, np.ndarray]:
    """Detection rows plus an ``images`` column: 0 on them, and the batch's image count on one extra tally
    row (label :data:`TALLY_LABEL`, dropped by the driver). Images with no detection give no row, so the
    tally is how the driver counts the images done for its progress lines."""
    tally = {"image_id": "", "label": TALLY_LABEL}  # every other column: 0
    out = {name: np.append(column, tally.get(name, 0)).astype(column.dtype) for name, column in rows.items()}
    out["images"] = np.append(np.zeros(len(rows["label"]), np.int32), np.int32(images))
    return out


def _rank_within_image(image_ids: np.ndarray) -> np.ndarray:
    """0, 1, 2... for consecutive rows of the same image (detections arrive grouped, best first)."""
    positions = np.arange(len(image_ids))
    starts = np.ones(len(image_ids), bool)
    starts[1:] = image_ids[1:] != image_ids[:-1]
    return positions - np.maximum.accumulate(np.where(starts, positions, 0))


POOL_START_TIMEOUT_S = 600  # generous: GPU nodes of an autoscaling cluster take minutes to start


def run_inference(
    shard_urls: list[str], workspace: Workspace, model_path: str, cfg: PipelineConfig, image_order: list[str]
) -> DetectionTable:
    """Detections of every image in the shards, ordered by ``image_order`` then score (deterministic)."""
    import ray.data  # lazily: 0.6 s more at every start of full.py, which imports every stage

    settings = cfg.evaluate
    # Reading is light I/O: a small CPU share, so a pool of actors holding every CPU cannot starve it.
    # decoder=None keeps the raw JPEG bytes (decoder=False still decodes images in Ray 2.60), so the actors
    # decode exactly as every other path does (OpenCV, yolov2.data.images.decode_rgb).
    ds = ray.data.read_webdataset(shard_urls, decoder=None, num_cpus=0.25)
    # Feed the pool once every actor holds the model, so batches spread over all of them (and their nodes):
    # otherwise the first actor ready takes every batch of a small split. An undersized cluster fails
    # after POOL_START_TIMEOUT_S with Ray's "not enough resources for the requested actor pool".
    ds.context.wait_for_min_actors_s = POOL_START_TIMEOUT_S
    ds = ds.map_batches(
        DetectActor,
        fn_constructor_kwargs=dict(
            workspace=workspace,
            model_path=model_path,
            predict=settings.predict,
            use_gpu=settings.gpus_per_actor > 0,
            amp=settings.amp,
            channels_last=settings.channels_last,
        ),
        batch_size=settings.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=settings.num_actors),
        num_gpus=settings.gpus_per_actor or None,
        num_cpus=settings.cpus_per_actor,
    )
    parts = []
    with Progress("evaluate", len(image_order), "images", desc="inference", heartbeat=True) as progress:
        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):  # each block as it is produced
            progress.advance(pc.sum(block["images"]).as_py() or 0)
            detections = block.filter(pc.not_equal(block["label"], TALLY_LABEL))
            if detections.num_rows:
                parts.append(detections)
    if not parts:
        return DetectionTable.empty()
    merged = pa.concat_tables(parts)
    position = {image_id: i for i, image_id in enumerate(image_order)}
    image_pos = np.array([position[i] for i in merged.column("image_id").to_pylist()], np.int64)
    order = np.lexsort((merged.column("rank").to_numpy(), image_pos))
    return DetectionTable.from_arrow(merged.take(order))


def evaluate_body(ctx: StageContext) -> dict[str, Any]:
    cfg = ctx.cfg
    settings = cfg.evaluate
    shard_result = ctx.upstream["shard"]
    split_info = shard_result.manifest["splits"].get(settings.split)
    if split_info is None:
        raise ValueError(
            f"evaluate.split={settings.split!r} is not a sharded split ({', '.join(shard_result.manifest['splits'])})"
        )
    class_names = shard_result.manifest["class_names"]
    index = ctx.workspace.read_parquet(shard_result.output_dir, split_info["index"])
    records = table_to_records(index)
    checkpoint = evaluated_checkpoint(settings.checkpoint, ctx.upstream["train"].manifest)
    model_path = f"{ctx.upstream['train'].output_dir}/{checkpoint['file']}"
    ctx.log_params({f"checkpoint.{k}" if k != "checkpoint" else k: v for k, v in checkpoint.items()})
    urls = [ctx.workspace.uri_of(shard_result.output_dir, name) for name in split_info["shards"]]
    if settings.predict.tree_depth is not None:
        class_names, records = _at_tree_depth(_model_spec(ctx.workspace, model_path), records, settings.predict)

    detections = run_inference(urls, ctx.workspace, model_path, cfg, [r.image_id for r in records])
    ctx.workspace.write_parquet(detections.to_arrow(), ctx.out("detections.parquet"))

    flat: dict[str, float] = {}
    results: dict[str, Any] = {}
    # one by one: a progress line per metric
    with Progress("evaluate", len(settings.metrics), "metrics", desc="scoring", heartbeat=True) as progress:
        for name in settings.metrics:
            one_flat, one_result = compute_metrics(
                records,
                detections,
                class_names,
                [name],
                settings.coco_backend,
                coco_chunks=settings.coco_workers,
                map_fn=ray_map,
            )
            flat.update(one_flat)
            results.update(one_result)
            progress.advance()
    report = {name: result.to_dict() for name, result in results.items()}
    ctx.workspace.write_json({"metrics": flat, "results": report}, ctx.out("metrics.json"))
    ctx.log_metrics(flat)
    ctx.log_artifact_bytes(json.dumps(report, indent=2).encode(), "metrics.json")
    ctx.log_artifact_bytes(_per_class_table(results, class_names).encode(), "per_class_ap.md")
    _log_figures(ctx, records, detections, class_names, results)
    headline = {k: v for k, v in flat.items() if "." not in k}
    log.info("evaluate: %s", ", ".join(f"{k}={v:.4f}" for k, v in headline.items()))
    return {
        "metrics": headline,
        "checkpoint": checkpoint,
        "detections": "detections.parquet",
        "images": len(records),
        "num_detections": len(detections),
    }


def _model_spec(workspace: Workspace, model_path: str) -> ModelSpec:
    """The spec of a model file in the workspace (its weights are loaded too, and dropped)."""
    with tempfile.NamedTemporaryFile(suffix=".pt") as local:
        local.write(workspace.read_bytes(model_path))
        local.flush()
        return ModelSpec(**load_checkpoint(local.name)["spec"])


def _at_tree_depth(
    spec: ModelSpec, records: list[ImageRecord], predict: PredictConfig
) -> tuple[list[str], list[ImageRecord]]:
    """``evaluate.tree_depth`` (YOLO9000): the class names and ground truth at that depth of the model's tree, as
    the Predictor scores it (each class's ancestor there; boxes of classes above that depth are left out)."""
    tree = spec.word_tree()
    if tree is None or spec.tree_classes is None or predict.tree_depth is None:
        raise ConfigError("evaluate.tree_depth scores a YOLO9000 model (model.tree); this model has no tree")
    level, position = ancestors_at_depth(tree, spec.tree_classes, predict.tree_depth)
    at_depth = relabel_records(records, position)
    dropped = sum(r.num_boxes for r in records) - sum(r.num_boxes for r in at_depth)
    names = [tree.names[node] for node in level]
    depth = predict.tree_depth
    log.info("evaluate: tree depth %d: %d classes (%s); %d boxes above it left out", depth, len(names), names, dropped)
    return names, at_depth


def evaluated_checkpoint(requested: str, train_manifest: dict[str, Any]) -> dict[str, Any]:
    """The train stage's model file to evaluate (``evaluate.checkpoint``), as the manifest records it:
    ``checkpoint`` (best | last), ``file``, ``epoch``, and for best the val metric it was chosen by and its value.
    ``best`` without a ``best.pt`` (no val split) falls back to the last model, with a log line."""
    if requested == "best" and train_manifest.get("best"):
        return {
            "checkpoint": "best",
            "file": train_manifest["best"],
            "epoch": train_manifest.get("best_epoch"),
            "chosen_by": f"val {train_manifest.get('best_by', BEST_BY)}",
            "chosen_value": train_manifest.get("best_map50_voc07"),
        }
    if requested == "best":
        log.warning(
            "evaluate: checkpoint=best, but training had no val split (no best.pt): evaluating the last model (%s)",
            train_manifest["model"],
        )
    return {
        "checkpoint": "last",
        "file": train_manifest["model"],
        "epoch": train_manifest.get("epochs"),
        "chosen_by": None,
        "chosen_value": None,
    }


def ray_map(fn, *iterables):
    """``map`` over Ray tasks, results in input order (used for COCO category chunks)."""
    remote = ray.remote(num_cpus=1)(fn)
    return ray.get([remote.remote(*args) for args in zip(*iterables)])


def _per_class_table(results: dict[str, Any], class_names: list[str]) -> str:
    names = list(results)
    lines = ["| class | " + " | ".join(f"AP ({n})" for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    for c, cls in enumerate(class_names):
        cells = []
        for n in names:
            ap = results[n].ap[c] if n.startswith("voc") else results[n].per_class_ap[c]
            cells.append("-" if not np.isfinite(ap) else f"{ap:.4f}")
        lines.append(f"| {cls} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _log_figures(ctx: StageContext, records, detections, class_names, results) -> None:
    """PR curves, confusion matrix, error breakdown and sample images, as MLflow figures."""
    for name, figure in evaluation_figures(
        records, detections, class_names, results, ctx.cfg.evaluate.num_sample_images
    ).items():
        ctx.log_figure(figure, name)


SPEC = StageSpec(
    name="evaluate",
    upstream=(shard.SPEC, train.SPEC),
    config_keys=("evaluate",),
    version=1,
    body=evaluate_body,
    summary="parallel inference over the evaluation split's shards, then VOC and COCO mAP",
)


if __name__ == "__main__":
    raise SystemExit(stage_main(SPEC))
