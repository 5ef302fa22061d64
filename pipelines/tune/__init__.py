"""The `tune` stage: hyperparameter search over the train stage with Ray Tune, ASHA early stopping, every trial
a child MLflow run.

The search space (``tune.space``, pipelines/tune/space.py) is sampled before Ray starts anything, seeded:
the same config gives the same trials. Each trial is the train stage itself (:mod:`pipelines.tune.trial`):
the same worker function, data and validation, on ``tune.num_workers`` workers, reporting the val split's VOC07
mAP@0.5 every epoch; ASHA (``grace_period``, ``reduction_factor``, ``max_t = tune.max_epochs``) stops the
trials that trail at each rung. The anchors for every k the space can sample come from the anchors stage's
k table. Trials run concurrently as far as the cluster's CPUs (GPUs) allow.

Outputs: ``trials.parquet`` (config, metric per epoch, best metric, epochs run, wall time, node, outcome),
``best_config.yaml`` (what ``train.from_tune: true`` applies), ``trial_curves.png`` and ``trial_params.png``,
all also in MLflow. A rerun after the driver was killed restores the search (``Tuner.restore``): finished
trials are not run again and unfinished ones resume from their last checkpoint.

Run alone: ``python -m pipelines.tune --config configs/demo.yaml`` (``full.py`` runs it when ``tune.enabled`` or
``train.from_tune`` is true, or with ``--stages tune``).
"""

from __future__ import annotations

from typing import Any

from pipelines import anchors, shard
from pipelines.config import PipelineConfig
from pipelines.dag import StageContext, StageSpec


def tune_body(ctx: StageContext) -> dict[str, Any]:
    """The stage's body, imported when it runs: the search imports the train stage, which declares this stage
    as its upstream under ``train.from_tune`` (so this module must not import it)."""
    from pipelines.tune.stage import search

    return search(ctx)


def _runs_if(cfg: PipelineConfig) -> bool:
    return cfg.tune.enabled or cfg.train.from_tune


SPEC = StageSpec(
    name="tune",
    upstream=(shard.SPEC, anchors.SPEC),
    config_keys=("tune", "model", "loss", "train", "anchors", "evaluate"),
    version=1,
    body=tune_body,
    summary="hyperparameter search over the train stage with Ray Tune: seeded samples, ASHA on val mAP, "
    "a child MLflow run per trial, best_config.yaml",
    runs_if=_runs_if,
    resumes=True,
)
