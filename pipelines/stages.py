"""The pipeline's stages, in run order: every stage comes after the stages it reads.

Adding a stage: a module ``pipelines/<name>.py`` (or a package whose driver module holds it, as train and tune)
that declares ``SPEC = StageSpec(...)`` (pipelines/dag.py) and ends with ``raise SystemExit(stage_main(SPEC))``,
and one line here. ``full.py`` runs this tuple.
"""

from __future__ import annotations

from pipelines import anchors, evaluate, prepare, shard
from pipelines.dag import StageSpec
from pipelines.pretrain import stage as pretrain
from pipelines.train import driver as train
from pipelines.tune import stage as tune

STAGES: tuple[StageSpec, ...] = (
    prepare.SPEC,
    shard.SPEC,
    anchors.SPEC,
    pretrain.SPEC,
    tune.SPEC,
    train.SPEC,
    evaluate.SPEC,
)
STAGE_NAMES: tuple[str, ...] = tuple(spec.name for spec in STAGES)


def stage_named(name: str) -> StageSpec:
    """The registered stage called ``name``; KeyError naming the stages when there is none."""
    for spec in STAGES:
        if spec.name == name:
            return spec
    raise KeyError(f"no stage {name!r}; stages are {', '.join(STAGE_NAMES)}")
