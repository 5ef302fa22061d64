"""The `pretrain` stage: the detector's backbone trained as a classifier, then handed to the detector.

YOLOv2's first improvement over YOLO (the paper's "hi-res classifier", +3.7 mAP on VOC2007): Darknet-19 is
trained on classification at low resolution (``darknet19.cfg``), fine-tuned at twice the size
(``darknet19_448.cfg``), and its first 18 conv layers start the detector (``darknet19_448.conv.23``).

1. The data (:mod:`pipelines.pretrain.dataset`): object crops of the shard stage's training boxes, an image
   folder, or generated shapes, as classification shards with a stratified val split, by Ray tasks.
2. Training (:mod:`pipelines.pretrain.worker`): Ray Train on ``pretrain.num_workers`` workers, the low phase
   then the high one (``pretrain.high.epochs: 0`` skips it), a checkpoint every epoch, restarts after a failed
   worker, ``--resume`` after a stopped or killed run (as the train stage), rank 0 logging to MLflow.
3. Outputs: ``backbone.weights`` (the backbone as a Darknet partial weights file: for Darknet-19 the 18 conv
   layers ``darknet19_448.conv.23`` holds, readable by Darknet), ``backbone.pt`` (its state dict),
   ``classifier.pt``, ``results.parquet`` (per epoch: phase, loss, val top-1 / top-5), ``curves.png``,
   ``confusion.png`` (the last epoch's val split) and ``samples.png`` (val images with their predictions).

``train.init_from: pretrain`` starts the detector from ``backbone.weights``; train's fingerprint then includes
this stage's. Run alone: ``python -m pipelines.pretrain --config configs/demo.yaml --set pretrain.source=synthetic``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray.train
import torch
from ray.train.torch import TorchTrainer

from pipelines import ray_runtime, shard, tracking
from pipelines.config import PipelineConfig, with_overrides
from pipelines.dag import StageContext, StageFlag, StageResult, StageSpec
from pipelines.pretrain.dataset import build_dataset, read_split
from pipelines.pretrain.worker import PHASES, PretrainJob, pretrain_loop_per_worker
from pipelines.train.checkpoints import RUN_NAME, STATE_FILE, has_checkpoint
from pipelines.workspace import Workspace
from yolov2.data.classify_transforms import classifier_val_transform
from yolov2.data.images import decode_rgb
from yolov2.engine.checkpoint import load_checkpoint
from yolov2.errors import ConfigError
from yolov2.metrics.classification import class_confusion_figure, class_samples_figure
from yolov2.metrics.figures import figure_png
from yolov2.models.classifier import BackboneClassifier, build_classifier, save_backbone_state, save_backbone_weights

log = logging.getLogger(__name__)
BACKBONE_WEIGHTS, BACKBONE_STATE, CLASSIFIER = "backbone.weights", "backbone.pt", "classifier.pt"
RESULTS, CURVES, CONFUSION, SAMPLES = "results.parquet", "curves.png", "confusion.png", "samples.png"
NUM_SAMPLE_IMAGES = 16


def pretrain_body(ctx: StageContext, resume: bool = False) -> dict[str, Any]:
    import mlflow  # here: about 2 s to import, and only a tracked run needs it

    cfg, p = ctx.cfg, ctx.cfg.pretrain
    dataset = build_dataset(ctx)
    ctx.log_metrics({f"{split}_samples": float(dataset["splits"][split]["samples"]) for split in ("train", "val")})
    run_id = mlflow.active_run().info.run_id if ctx.tracking_enabled and mlflow.active_run() else None
    job = PretrainJob(
        workspace_uri=ctx.workspace.uri,
        output_dir=ctx.output_dir,
        checkpoint_dir=f"{ctx.output_dir}/ray/{RUN_NAME}",
        dataset=dataset,
        model_name=cfg.model.name,
        width_multiplier=cfg.model.width_multiplier,
        pretrain=p,
        flush_timeout=cfg.mlflow.flush_timeout,
        tracking_uri=mlflow.get_tracking_uri() if run_id else None,
        run_id=run_id,
        faults=ctx.faults,
    )
    storage = ctx.workspace.uri_of(ctx.output_dir, "ray")
    # Ray Train restores a run whose storage folder and name hold checkpoints, and the stage keeps that folder
    # only under --resume (the data is rebuilt first: the same shards, as its split is a seeded hash)
    resumed = resume and (not ctx.workspace.is_local or has_checkpoint(Path(storage)))
    if resume and not resumed:
        log.warning("--resume: no checkpoint under %s, starting from epoch 0", storage)
    started = time.time()
    result = _trainer(job, storage).fit()
    if result.error:
        raise result.error
    with result.checkpoint.as_directory() as folder:
        state = load_checkpoint(Path(folder) / STATE_FILE)
    classifier = build_classifier(cfg.model.name, len(dataset["class_names"]), cfg.model.width_multiplier)
    classifier.load_state_dict(state["model"])
    layers = _publish(ctx, classifier, state, dataset)
    by_phase = {
        name: {k: v for k, v in rows[-1].items() if k.startswith("val_")}
        for name in PHASES
        if (rows := [r for r in state["results"] if r["phase"] == name])
    }
    for name, metrics in by_phase.items():
        log.info("pretrain: after the %s phase: %s", name, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return {
        "dataset": dataset,
        "phases": by_phase,
        "epochs": int(state["state"]["epoch"]),
        "resumed": resumed,
        "backbone_layers": layers,
        "model": {"name": cfg.model.name, "width_multiplier": cfg.model.width_multiplier},
        "train_seconds": round(time.time() - started, 1),
        "files": {
            "backbone_weights": BACKBONE_WEIGHTS,
            "backbone_state": BACKBONE_STATE,
            "classifier": CLASSIFIER,
            "results": RESULTS,
            "figures": [CURVES, CONFUSION, SAMPLES],
        },
    }


def _trainer(job: PretrainJob, storage: str) -> TorchTrainer:
    p = job.pretrain
    return TorchTrainer(
        pretrain_loop_per_worker,
        train_loop_config={"job": job},
        scaling_config=ray.train.ScalingConfig(
            num_workers=p.num_workers,
            use_gpu=p.use_gpu,
            resources_per_worker={"CPU": p.cpus_per_worker, **({"GPU": 1} if p.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=RUN_NAME,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=p.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            logging_config=ray_runtime.train_logging_config(),
            worker_runtime_env={"env_vars": tracking.worker_mlflow_env()} if job.run_id else None,
        ),
    )


def _publish(ctx: StageContext, classifier: BackboneClassifier, state: dict[str, Any], dataset: dict[str, Any]) -> int:
    """The weights files, the results table and the figures, in the output and in MLflow; the backbone's
    conv layer count (what ``train.init_from: pretrain`` loads)."""
    names = dataset["class_names"]
    with tempfile.TemporaryDirectory() as folder:
        save_backbone_weights(classifier, Path(folder) / BACKBONE_WEIGHTS)
        save_backbone_state(classifier, Path(folder) / BACKBONE_STATE)
        torch.save({"model": classifier.state_dict(), "class_names": names}, Path(folder) / CLASSIFIER)
        for name in (BACKBONE_WEIGHTS, BACKBONE_STATE, CLASSIFIER):
            ctx.workspace.write_bytes((Path(folder) / name).read_bytes(), ctx.out(name))
    ctx.workspace.write_parquet(pa.Table.from_pylist(state["results"]), ctx.out(RESULTS))
    confusion = state["confusion"].numpy()
    size = state["results"][-1]["size"]
    figures = {
        CURVES: _curves_figure(state["results"]),
        CONFUSION: class_confusion_figure(confusion, names),
        SAMPLES: _samples_figure(ctx, classifier, dataset, size),
    }
    for name, figure in figures.items():
        ctx.workspace.write_bytes(figure_png(figure), ctx.out(name))
        ctx.log_figure(figure, name)
    for name in (RESULTS, BACKBONE_WEIGHTS):
        ctx.log_artifact_bytes(ctx.workspace.read_bytes(ctx.out(name)), name)
    return classifier.num_backbone_layers


def _samples_figure(ctx: StageContext, classifier: BackboneClassifier, dataset: dict[str, Any], size: int):
    """The first val images with their true and predicted classes."""
    samples = []
    for _, data, label in read_split(ctx.workspace, ctx.output_dir, dataset, "val"):
        samples.append((decode_rgb(data), label))
        if len(samples) == NUM_SAMPLE_IMAGES:
            break
    classifier.eval()
    with torch.no_grad():
        batch = torch.stack([classifier_val_transform(image, size) for image, _ in samples])
        probabilities = classifier.predict_proba(batch)
    confidence, predicted = probabilities.max(1)
    return class_samples_figure(
        [image for image, _ in samples],
        [label for _, label in samples],
        predicted.tolist(),
        confidence.tolist(),
        dataset["class_names"],
    )


def _curves_figure(results: list[dict[str, Any]]):
    """Val top-1 (and top-5) and the train and val loss by epoch, the phase change marked."""
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in results]
    figure = Figure(figsize=(10, 4), layout="constrained")
    accuracy, loss = figure.subplots(1, 2)
    for key in ("val_top1", "val_top5", "train_top1"):
        if all(key in r for r in results):
            accuracy.plot(epochs, [r[key] for r in results], marker=".", label=key)
    for key in ("train_loss", "val_loss"):
        loss.plot(epochs, [r[key] for r in results], marker=".", label=key)
    high = [r["epoch"] for r in results if r["phase"] == "high"]
    for axes in (accuracy, loss):
        if high:
            axes.axvline(high[0] - 0.5, color="grey", linestyle="--", label="high resolution phase")
        axes.set_xlabel("epoch")
        axes.legend()
    accuracy.set_ylabel("accuracy")
    accuracy.set_ylim(0, 1)
    loss.set_ylabel("cross-entropy")
    figure.suptitle("pretrain: the classifier by epoch")
    return figure


def pretrained_config(cfg: PipelineConfig, workspace: Workspace, pretrain: StageResult) -> PipelineConfig:
    """``train.init_from: pretrain``: the config with the pretrain stage's backbone as ``train.init_weights``
    (its Darknet partial weights file, all of its conv layers)."""
    manifest = pretrain.manifest
    if not workspace.is_local:
        raise ConfigError(
            f"train.init_from: pretrain reads the backbone from a local workspace, and {workspace.uri} is not one: "
            f"copy {workspace.uri_of(pretrain.output_dir, BACKBONE_WEIGHTS)} to the nodes and set train.init_weights"
        )
    weights = workspace.local_path(pretrain.output_dir, manifest["files"]["backbone_weights"])
    log.info(
        "train: starting from the pretrain stage's backbone %s (%d conv layers)", weights, manifest["backbone_layers"]
    )
    overrides = {"train.init_weights": str(weights), "train.init_layers": manifest["backbone_layers"]}
    return with_overrides(cfg, overrides, "the pretrain stage's backbone")


def _runs_if(cfg: PipelineConfig) -> bool:
    return cfg.pretrain.enabled or cfg.train.init_from == "pretrain"


def _from_crops(cfg: PipelineConfig) -> bool:
    return cfg.pretrain.source == "crops"


SPEC = StageSpec(
    name="pretrain",
    upstream=(),
    upstream_if=((shard.SPEC, _from_crops),),
    config_keys=("pretrain", "model.name", "model.width_multiplier", "data.synthetic"),
    version=1,
    body=pretrain_body,
    flags=(
        StageFlag(
            "resume", "continue an interrupted run of this config from its last checkpoint", keeps_partial_output=True
        ),
    ),
    summary="the backbone as a classifier (object crops, an image folder or generated shapes), low then high "
    "resolution, Darknet's recipe; backbone.weights for train.init_from: pretrain",
    runs_if=_runs_if,
)
