"""What the driver hands each Ray Train worker: one typed, frozen :class:`TrainJob`.

Ray Train passes ``train_loop_config`` as a dict: the driver wraps the job as ``{"job": job}``
(:meth:`TrainJob.as_loop_config`) and the worker unwraps it (:meth:`TrainJob.from_loop_config`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipelines.faults import NO_FAULTS, FaultPlan
from yolov2.config import EvaluateConfig, LossConfig, PipelineConfig, TrainConfig
from yolov2.inference import ModelSpec


@dataclass(frozen=True)
class TrainJob:
    """Everything a train worker needs; paths are relative to the workspace root unless named ``uri``."""

    workspace_uri: str
    output_dir: str  # the stage's output folder (best.pt, the MLflow delivery report)
    checkpoint_dir: str  # Ray Train's run folder: checkpoint_<time>/state.pt
    shard_dir: str  # the shard stage's output folder
    train_index: str  # parquet index of the training shards, in shard_dir
    val_index: str | None  # of the validation shards; None: no validation
    train_total: int  # training images
    spec: ModelSpec
    train: TrainConfig
    loss: LossConfig
    evaluate: EvaluateConfig  # the predictor settings validation shares with the evaluate stage
    flush_timeout: float  # seconds rank 0 waits at the end for MLflow to take the buffered metrics
    tracking_uri: str | None = None  # None: no MLflow logging from the workers
    run_id: str | None = None  # the stage's MLflow run, which rank 0 logs into
    faults: FaultPlan = NO_FAULTS

    def as_loop_config(self) -> dict[str, Any]:
        return {"job": self}

    @staticmethod
    def from_loop_config(config: dict[str, Any]) -> TrainJob:
        job = config["job"]
        if not isinstance(job, TrainJob):
            raise TypeError(f"train_loop_config['job'] is a {type(job).__name__}, expected a TrainJob")
        return job


def accumulation_for(effective_batch: int, batch_size: int, world_size: int) -> int:
    """Micro-batches per optimizer step so that batch_size * world_size * accumulation ~ effective_batch."""
    return max(1, round(effective_batch / (batch_size * world_size)))


def model_spec(cfg: PipelineConfig, class_names: list[str], anchors: list[list[float]]) -> ModelSpec:
    """The model the config describes, for these classes and anchors (grid cells at stride 32)."""
    m = cfg.model
    return ModelSpec(
        m.name,
        len(class_names),
        [list(map(float, a)) for a in anchors],
        list(class_names),
        cfg.train.input_size,
        m.width_multiplier,
        m.reorg,
        m.sppf,
        m.decoupled_head,
        m.batch_norm,
    )
