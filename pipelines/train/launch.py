"""Launching one train run on Ray Train: the job every worker gets, the Ray Dataset for ``ray_data`` ingest, and
the ``TorchTrainer``. The train stage (:mod:`pipelines.train.driver`) runs one; each trial of the tune stage
(:mod:`pipelines.tune.trial`) runs one too, with its own output folder and Tune's report callback."""

from __future__ import annotations

from collections.abc import Sequence

import ray.data
import ray.train
from ray.train import UserCallback
from ray.train.torch import TorchTrainer

from pipelines import ray_runtime, tracking
from pipelines.config import PipelineConfig
from pipelines.dag import StageResult
from pipelines.faults import NO_FAULTS, FaultPlan
from pipelines.train.checkpoints import RUN_NAME
from pipelines.train.ingest import RAY_DATA_CPUS, ray_data_train_dataset
from pipelines.train.job import TrainJob, model_spec
from pipelines.train.worker import train_loop_per_worker
from pipelines.workspace import Workspace
from yolov2.data.sources import CLASS_ONLY_SPLIT
from yolov2.errors import ConfigError


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
        class_only_index=splits[CLASS_ONLY_SPLIT]["index"] if CLASS_ONLY_SPLIT in splits else None,
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
    if job.class_only_index:
        raise ConfigError(
            "train.ingest: ray_data does not mix in classification-only samples (data.class_only_root) yet; "
            "use train.ingest: webdataset"
        )
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
