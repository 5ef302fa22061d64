"""What the driver hands each Ray Train worker: one typed, frozen :class:`TrainJob`.

Ray Train passes ``train_loop_config`` as a dict: the driver wraps the job as ``{"job": job}``
(:meth:`TrainJob.as_loop_config`) and the worker unwraps it (:meth:`TrainJob.from_loop_config`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pipelines.config import EvaluateConfig, PipelineConfig, TrainConfig
from pipelines.faults import NO_FAULTS, FaultPlan
from yolov2.config import LossConfig, PredictConfig
from yolov2.inference import ModelSpec
from yolov2.wordtree import map_class_names, read_tree


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
    class_only_index: str | None  # YOLO9000: parquet index of the classification-only shards, in shard_dir
    spec: ModelSpec
    train: TrainConfig
    loss: LossConfig
    evaluate: EvaluateConfig  # the predictor settings validation shares with the evaluate stage
    flush_timeout: float  # seconds rank 0 waits at the end for MLflow to take the buffered metrics
    tracking_uri: str | None = None  # None: no MLflow logging from the workers
    run_id: str | None = None  # the stage's MLflow run, which rank 0 logs into
    faults: FaultPlan = NO_FAULTS
    console_lines: bool = True  # rank 0's progress and end-of-epoch lines (a tune trial's are the search's line)

    def as_loop_config(self) -> dict[str, Any]:
        return {"job": self}

    @staticmethod
    def from_loop_config(config: dict[str, Any]) -> TrainJob:
        job = config["job"]
        if not isinstance(job, TrainJob):
            raise TypeError(f"train_loop_config['job'] is a {type(job).__name__}, expected a TrainJob")
        return job


VALIDATION_MAX_CANDIDATES = 2000
"""Validation's cap on the (box, class) pairs per image kept before NMS when ``evaluate.max_candidates`` is unset
(the evaluate stage keeps all, as Darknet does). Validation runs every epoch, and early in training nearly every
pair passes the 0.005 threshold; the cap keeps NMS short. It stays 2000: best.pt is the epoch with the best
validation mAP, so changing it can change which checkpoint training keeps."""


def validation_predict(train: TrainConfig, evaluate: EvaluateConfig) -> PredictConfig:
    """The predictor settings of training's validation: the evaluate stage's, at ``train.input_size`` (the size
    the model trains at), with :data:`VALIDATION_MAX_CANDIDATES` unless ``evaluate.max_candidates`` is set."""
    predict = evaluate.predict
    return dataclasses.replace(
        predict,
        input_size=train.input_size,
        max_candidates=predict.max_candidates or VALIDATION_MAX_CANDIDATES,
        tree_depth=None,  # validation scores the dataset's classes (best.pt's choice must not depend on these)
        tree_walk=False,
    )


def accumulation_for(effective_batch: int, batch_size: int, world_size: int) -> int:
    """Micro-batches per optimizer step so that batch_size * world_size * accumulation ~ effective_batch."""
    return max(1, round(effective_batch / (batch_size * world_size)))


def model_spec(cfg: PipelineConfig, class_names: list[str], anchors: list[list[float]]) -> ModelSpec:
    """The model the config describes, for these classes and anchors (grid cells at stride 32); with
    ``model.tree`` its classes are the tree's nodes and ``tree_classes`` the node of each dataset class."""
    m = cfg.model
    tree = read_tree(m.tree) if m.tree else None
    return ModelSpec(
        m.name,
        tree.num_nodes if tree else len(class_names),
        [list(map(float, a)) for a in anchors],
        list(class_names),
        cfg.train.input_size,
        m.width_multiplier,
        m.reorg,
        m.sppf,
        m.decoupled_head,
        m.batch_norm,
        tree={"names": list(tree.names), "parents": list(tree.parents)} if tree else None,
        tree_classes=list(map_class_names(class_names, tree)) if tree else None,
    )
