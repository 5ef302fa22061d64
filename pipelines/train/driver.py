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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray.data
import ray.train
from ray.train import UserCallback
from ray.train.torch import TorchTrainer

from pipelines import anchors, ray_runtime, shard, tracking, tune
from pipelines.config import PipelineConfig, with_overrides
from pipelines.dag import StageContext, StageFlag, StageResult, StageSpec
from pipelines.faults import NO_FAULTS, FaultPlan
from pipelines.train.checkpoints import BEST_BY, BEST_FILE, RUN_NAME, STATE_FILE, has_checkpoint, model_file_bytes
from pipelines.train.ingest import RAY_DATA_CPUS, ray_data_train_dataset
from pipelines.train.job import TrainJob, model_spec
from pipelines.train.results import RESULTS_CSV, RESULTS_PARQUET, publish_results
from pipelines.train.worker import train_loop_per_worker
from pipelines.workspace import Workspace
from yolov2.engine.checkpoint import load_checkpoint
from yolov2.engine.results import results_from_state

log = logging.getLogger(__name__)


def train_body(ctx: StageContext, resume: bool = False) -> dict[str, Any]:
    import mlflow  # here: `import mlflow` takes about 2 s, and only a tracked run needs it

    cfg, anchors_grid = ctx.cfg, ctx.upstream["anchors"].manifest["anchors"]
    if cfg.train.from_tune:
        cfg, anchors_grid = tuned_config(cfg, ctx.upstream["tune"].manifest)
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


def train_job(
    cfg: PipelineConfig,
    workspace: Workspace,
    shard_result: StageResult,
    anchors_grid: list[list[float]],
    output_dir: str,
    *,
    tracking_uri: str | None,
    run_id: str | None,
    faults: FaultPlan = NO_FAULTS,
    console_lines: bool = True,
) -> TrainJob:
    """What every worker of a train run gets: the data, the model for these anchors, the settings, where to
    write (``output_dir``; Ray Train's run folder under it) and the MLflow run rank 0 logs into."""
    splits = shard_result.manifest["splits"]
    return TrainJob(
        workspace_uri=workspace.uri,
        output_dir=output_dir,
        # Ray Train restores a run whose storage folder and name already hold checkpoints (and the stage
        # deleted that folder unless resuming), so --resume only has to keep the folder.
        checkpoint_dir=f"{output_dir}/ray/{RUN_NAME}",
        shard_dir=shard_result.output_dir,
        train_index=splits["train"]["index"],
        val_index=splits["val"]["index"] if "val" in splits and splits["val"]["images"] else None,
        train_total=splits["train"]["images"],
        spec=model_spec(cfg, shard_result.manifest["class_names"], anchors_grid),
        train=cfg.train,
        loss=cfg.loss,
        evaluate=cfg.evaluate,
        flush_timeout=cfg.mlflow.flush_timeout,
        tracking_uri=tracking_uri,
        run_id=run_id,
        faults=faults,
        console_lines=console_lines,
    )


def train_datasets(
    job: TrainJob, workspace: Workspace, shard_result: StageResult
) -> dict[str, ray.data.Dataset] | None:
    """The Ray Dataset of the training shards for ``train.ingest: ray_data``; None for webdataset ingest."""
    t = job.train
    if t.ingest != "ray_data":
        return None
    train_split = shard_result.manifest["splits"]["train"]
    urls = [workspace.uri_of(shard_result.output_dir, name) for name in train_split["shards"]]
    return {"train": ray_data_train_dataset(t, urls, train_split["images"], t.num_workers)}


def torch_trainer(
    job: TrainJob,
    storage: str,
    datasets: dict[str, ray.data.Dataset] | None,
    callbacks: Sequence[UserCallback] = (),
    logging_config: ray.train.LoggingConfig | None = None,
) -> TorchTrainer:
    """Ray Train's trainer for the job: its workers and their resources (ray_data trainers leave some CPU to
    Ray Data's tasks), checkpoints under ``storage``, restarts, and fail-fast MLflow requests when tracked;
    ``callbacks`` (a tune trial's ``TuneReportCallback``) see every report. ``logging_config``: Ray Train's console
    level, by default from this process's Ray (:func:`ray_runtime.train_logging_config`)."""
    t = job.train
    worker_cpus = max(t.cpus_per_worker - RAY_DATA_CPUS, RAY_DATA_CPUS) if datasets else t.cpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=job.as_loop_config(),
        scaling_config=ray.train.ScalingConfig(
            num_workers=t.num_workers,
            use_gpu=t.use_gpu,
            resources_per_worker={"CPU": worker_cpus, **({"GPU": 1} if t.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            name=RUN_NAME,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            logging_config=logging_config or ray_runtime.train_logging_config(),
            worker_runtime_env={"env_vars": tracking.worker_mlflow_env()} if job.run_id else None,
            callbacks=list(callbacks),
        ),
        datasets=datasets,
    )


def _from_tune(cfg: PipelineConfig) -> bool:
    return cfg.train.from_tune


SPEC = StageSpec(
    name="train",
    upstream=(shard.SPEC, anchors.SPEC),
    upstream_if=((tune.SPEC, _from_tune),),
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
