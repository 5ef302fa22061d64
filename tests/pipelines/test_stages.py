"""pipelines/stages.py: the registry that full.py runs, each stage declared once."""

from __future__ import annotations

import importlib

import pytest

from pipelines.dag import StageSpec
from pipelines.stages import STAGE_NAMES, STAGES, stage_named


def test_every_stage_comes_after_its_upstream_stages():
    seen: list[StageSpec] = []
    for spec in STAGES:
        for up in spec.upstream + tuple(conditional for conditional, _ in spec.upstream_if):
            assert any(up is earlier for earlier in seen), f"{spec.name} needs {up.name}, registered later or never"
        seen.append(spec)


def test_names_are_unique_and_in_pipeline_order():
    assert STAGE_NAMES == ("prepare", "shard", "anchors", "pretrain", "tune", "train", "evaluate")
    assert len(set(STAGE_NAMES)) == len(STAGES)


def test_each_stage_module_declares_its_spec():
    for spec in STAGES:
        module = importlib.import_module(spec.body.__module__)  # pipelines.<name>, or a package's driver module
        assert module.__name__.startswith(f"pipelines.{spec.name}") and module.SPEC is spec
        assert spec.summary and spec.version >= 1 and spec.config_keys
        assert len({flag.name for flag in spec.flags}) == len(spec.flags)


def test_stage_named():
    assert stage_named("anchors") is STAGES[2]
    with pytest.raises(KeyError, match="no stage 'anchor'; stages are prepare, shard"):
        stage_named("anchor")
