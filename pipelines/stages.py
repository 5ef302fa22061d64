"""The pipeline's stages, in run order: every stage comes after the stages it reads.

Adding a stage: a module ``pipelines/<name>.py`` that declares ``SPEC = StageSpec(...)`` (pipelines/dag.py)
and ends with ``raise SystemExit(stage_main(SPEC))``, and one line here. ``full.py`` runs this tuple.
"""

from __future__ import annotations

from pipelines import anchors, evaluate, prepare, shard, train, tune
from pipelines.dag import StageSpec

STAGES: tuple[StageSpec, ...] = (prepare.SPEC, shard.SPEC, anchors.SPEC, tune.SPEC, train.SPEC, evaluate.SPEC)
STAGE_NAMES: tuple[str, ...] = tuple(spec.name for spec in STAGES)


def stage_named(name: str) -> StageSpec:
    """The registered stage called ``name``; KeyError naming the stages when there is none."""
    for spec in STAGES:
        if spec.name == name:
            return spec
    raise KeyError(f"no stage {name!r}; stages are {', '.join(STAGE_NAMES)}")
