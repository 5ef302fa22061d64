"""The `train` stage: YOLOv2 on N Ray Train workers (gloo on CPU, NCCL on GPU), Darknet's recipe.

Each worker (:mod:`pipelines.train.worker`) reads its share of the training shards, trains with
:func:`yolov2.engine.trainer.train`, and reports a checkpoint through ``ray.train.report`` at the end of
every ``checkpoint_every`` epochs. ``FailureConfig(max_failures)`` restarts failed workers from the last
checkpoint; ``--resume`` continues a stopped run; a restart takes the newest complete checkpoint, also one
Ray had not registered when the worker died. Every ``val_every`` epochs all ranks validate, each its share
of the val split; rank 0 scores it (VOC07 and VOC12 mAP@0.5, COCO AP and AP50), logs to MLflow (into this
stage's run; buffered while the server is unreachable) and keeps ``best.pt``: the epoch with the best VOC07
mAP@0.5 on val. Rank 0 also writes the per-epoch results table (``results.parquet``, ``results.csv``). At the
end the driver writes ``model.pt`` (the last epoch's; EMA weights when enabled), logs it with
``mlflow.pytorch.log_model`` and registers it, and logs the results table and its curves (``results.png``).

Run alone: ``python -m pipelines.train --config configs/demo.yaml [--resume]``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines import anchors, shard, tracking
from pipelines.config import PipelineConfig, with_overrides
from pipelines.dag import StageContext, StageFlag, StageSpec
from pipelines.pretrain import stage as pretrain_stage
from pipelines.train.checkpoints import BEST_BY, BEST_FILE, STATE_FILE, has_checkpoint, model_file_bytes
from pipelines.train.launch import torch_trainer, train_datasets, train_job
from pipelines.train.results import RESULTS_CSV, RESULTS_PARQUET, publish_results
from pipelines.tune import stage as tune_stage
from yolov2.engine.checkpoint import load_checkpoint
from yolov2.engine.results import results_from_state

log = logging.getLogger(__name__)


def train_body(ctx: StageContext, resume: bool = False) -> dict[str, Any]:
    import mlflow  # here: `import mlflow` takes about 2 s, and only a tracked run needs it

    cfg, anchors_grid = ctx.cfg, ctx.upstream["anchors"].manifest["anchors"]
    if cfg.train.from_tune:
        cfg, anchors_grid = tuned_config(cfg, ctx.upstream["tune"].manifest)
    if cfg.train.init_from == "pretrain":
        cfg = pretrain_stage.pretrained_config(cfg, ctx.workspace, ctx.upstream["pretrain"])
    t = cfg.train
    shard_result = ctx.upstream["shard"]
    run_id = mlflow.active_run().info.run_id if ctx.tracking_enabled and mlflow.active_run() else None
    job = train_job(
        cfg,
        ctx.workspace,
        shard_result,
        anchors_grid,
        ctx.output_dir,
        tracking_uri=mlflow.get_tracking_uri() if run_id else None,
        run_id=run_id,
        faults=ctx.faults,
    )
    spec = job.spec
    datasets = train_datasets(job, ctx.workspace, shard_result)
    storage = ctx.workspace.uri_of(ctx.output_dir, "ray")
    resumed = resume and (not ctx.workspace.is_local or has_checkpoint(Path(storage)))
    if resume and not resumed:
        log.warning("--resume: no checkpoint under %s, starting from step 0", storage)
    trainer = torch_trainer(job, storage, datasets)
    started = time.time()
    result = trainer.fit()
    if result.error:
        raise result.error
    with result.checkpoint.as_directory() as folder:
        state = load_checkpoint(Path(folder) / STATE_FILE)
    model = spec.build()
    model.load_state_dict(state["ema"]["module"] if state.get("ema") else state["model"])
    model_bytes = model_file_bytes(model, spec)
    ctx.workspace.write_bytes(model_bytes, ctx.out("model.pt"))
    has_best = ctx.workspace.exists(ctx.out(BEST_FILE))
    publish_results(ctx, results_from_state(state.get("results", [])))
    final_metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    delivery = tracking.report_delivery(ctx.workspace, ctx.output_dir)
    if ctx.tracking_enabled:
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "model.pt").write_bytes(model_bytes)
            ctx.track(
                "final model", tracking.log_final_model, model, t.register_name, Path(folder) / "model.pt", t.input_size
            )
    return {
        "model": "model.pt",
        "best": BEST_FILE if has_best else None,
        "best_by": BEST_BY,
        "best_epoch": int(state["state"].get("best_epoch", 0)) if has_best else None,
        "steps": int(state["state"]["step"]),
        "epochs": int(state["state"]["epoch"]),
        "seen": int(state["state"]["seen"]),
        "best_map50_voc07": float(state["state"]["best_metric"]),
        "results": {"parquet": RESULTS_PARQUET, "csv": RESULTS_CSV},
        "final_metrics": final_metrics,
        "train_seconds": round(time.time() - started, 1),
        "spec": spec.__dict__,
        "resumed": resumed,
        "precision": state.get("precision"),
        "mlflow_delivery": delivery,
    }


def tuned_config(cfg: PipelineConfig, tune_manifest: dict[str, Any]) -> tuple[PipelineConfig, list[list[float]]]:
    """``train.from_tune``: the config with the tune stage's best trial's values, and its anchors."""
    best = tune_manifest["best_config"]
    tuned = with_overrides(cfg, best, "the tune stage's best_config.yaml")
    log.info("train: with the tune stage's best config: %s", ", ".join(f"{k}={v}" for k, v in best.items()))
    return tuned, tune_manifest["best_anchors"]


def _from_tune(cfg: PipelineConfig) -> bool:
    return cfg.train.from_tune


def _from_pretrain(cfg: PipelineConfig) -> bool:
    return cfg.train.init_from == "pretrain"


SPEC = StageSpec(
    name="train",
    upstream=(shard.SPEC, anchors.SPEC),
    upstream_if=((tune_stage.SPEC, _from_tune), (pretrain_stage.SPEC, _from_pretrain)),
    config_keys=("model", "loss", "train"),
    version=1,
    body=train_body,
    flags=(
        StageFlag(
            "resume", "continue an interrupted run of this config from its last checkpoint", keeps_partial_output=True
        ),
    ),
    summary="YOLOv2 on Ray Train workers: checkpoints, restarts, resume; validation on every rank; rank 0 logs "
    "to MLflow, keeps best.pt and the per-epoch results table",
)
