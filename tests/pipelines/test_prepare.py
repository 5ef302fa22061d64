"""The prepare stage: what its manifest tells the shard stage (no Ray needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import prepare
from pipelines.config import load_config
from pipelines.dag import run_stage
from pipelines.workspace import Workspace
from yolov2.data.synthetic import SHAPE_CLASSES
from yolov2.errors import ConfigError


def _prepare(tmp_path: Path, overrides: list[str]):
    cfg = load_config(None, [f"workspace={tmp_path / 'ws'}", *overrides])
    return run_stage(prepare.SPEC, cfg, Workspace.open(cfg.workspace), tracking_enabled=False).manifest


def test_an_existing_folder_is_used_as_it_is_and_class_names_are_left_to_shard(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    manifest = _prepare(tmp_path, ["data.kind=yolo", f"data.root={tmp_path / 'mine'}", "data.class_names=[a, b]"])
    assert manifest["format"] == "yolo" and manifest["root"] == str(tmp_path / "mine")
    assert "class_names" not in manifest and "archives" not in manifest  # not among prepare's config keys


def test_a_relative_root_is_read_from_the_working_folder(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "data" / "mine").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    manifest = _prepare(tmp_path, ["data.kind=voc", "data.root=data/mine"])
    assert manifest["root"] == str(tmp_path / "data" / "mine")
    with pytest.raises(ConfigError, match=r"data.root: .*/nowhere is not a folder"):
        _prepare(tmp_path, ["data.kind=voc", "data.root=nowhere"])


def test_generated_data_names_its_classes(tmp_path: Path) -> None:
    manifest = _prepare(
        tmp_path, ["data.synthetic.num_train=2", "data.synthetic.num_val=1", "data.synthetic.num_test=1"]
    )
    assert manifest["format"] == "voc" and manifest["class_names"] == list(SHAPE_CLASSES)
    assert (Path(manifest["root"]) / "ImageSets" / "Main" / "train.txt").read_text().count("\n") == 2
