"""pipelines/config.py: flat YAML keys into the library's settings types, and back out unchanged."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipelines.config import (
    EvaluateConfig,
    PipelineConfig,
    TrainConfig,
    flatten,
    from_dict,
    load_config,
    to_dict,
)
from yolov2.config import AugmentConfig, LoopConfig, PredictConfig
from yolov2.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_flat_keys_fill_the_embedded_settings():
    cfg = load_config(
        None,
        ["train.lr=0.01", "train.epochs=3", "train.jitter=0.2", "train.augment=none", "evaluate.conf_thresh=0.25"],
    )
    assert cfg.train.loop == LoopConfig(lr=0.01, epochs=3)
    assert cfg.train.augmentation == AugmentConfig(jitter=0.2, augment="none")
    assert cfg.evaluate.predict == PredictConfig(conf_thresh=0.25)
    assert isinstance(cfg.train.loop.lr, float)  # coerced as before


def test_input_sizes_stay_apart():
    cfg = load_config(None, ["train.input_size=320", "evaluate.input_size=608"])
    assert (cfg.train.input_size, cfg.evaluate.predict.input_size) == (320, 608)


def test_to_dict_is_flat_and_round_trips():
    cfg = load_config(REPO / "configs" / "demo.yaml", ["train.lr=0.002", "evaluate.max_candidates=50"])
    data = to_dict(cfg)
    train, evaluate = data["train"], data["evaluate"]
    assert "loop" not in train and "augmentation" not in train and "predict" not in evaluate
    assert (train["lr"], train["epochs"], train["jitter"], evaluate["max_candidates"]) == (
        0.002,
        cfg.train.loop.epochs,
        cfg.train.augmentation.jitter,
        50,
    )
    assert set(train) == {f.name for f in dataclasses.fields(TrainConfig)} - {"loop", "augmentation"} | {
        f.name for f in dataclasses.fields(LoopConfig)
    } | {f.name for f in dataclasses.fields(AugmentConfig)}
    assert set(evaluate) == {f.name for f in dataclasses.fields(EvaluateConfig)} - {"predict"} | {
        f.name for f in dataclasses.fields(PredictConfig)
    }
    assert from_dict(PipelineConfig, data, "<dict>") == cfg
    params = flatten(data)
    assert params["train.lr"] == 0.002 and params["evaluate.conf_thresh"] == cfg.evaluate.predict.conf_thresh
    assert not any(k.startswith(("train.loop", "train.augmentation", "evaluate.predict")) for k in params)


def test_unknown_and_bad_keys_are_named_as_written():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) train\.lrr; valid keys here: .*\blr\b") as e:
        load_config(None, ["train.lrr=0.1"])
    assert "loop" not in str(e.value).split("valid keys here:")[1].split(", ")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) train\.loop"):
        load_config(None, ["train.loop=1"])
    with pytest.raises(ConfigError, match=r"unknown key\(s\) evaluate\.predict"):
        load_config(None, ["evaluate.predict=1"])
    with pytest.raises(ConfigError, match=r"<defaults>: train\.lr must be float, got 'fast'"):
        load_config(None, ["train.lr=fast"])
    with pytest.raises(ConfigError, match=r"train\.schedule must be one of 'steps', 'cosine', got 'linear'"):
        load_config(None, ["train.schedule=linear"])
    with pytest.raises(ConfigError, match=r"evaluate\.resize must be one of 'darknet', 'opencv', got 'pil'"):
        load_config(None, ["evaluate.resize=pil"])
    with pytest.raises(ConfigError, match=r"train\.augment must be one of"):
        load_config(None, ["train.augment=heavy"])


def test_every_shipped_config_loads():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        assert isinstance(load_config(path), PipelineConfig)


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["data.splits={train: [train], val: [test], test: [test]}"], "maps both val and test to test: best.pt"),
        (["data.splits={train: [a], val: [b, c], test: [c, d]}"], "val and test to c: .*data.val_fraction"),
        (["data.val_fraction=0.2"], r"maps val to \['val'\]; remove val from data.splits"),
        (["data.splits={test: [test]}", "data.val_fraction=0.2"], "data.splits has no train split"),
        (["data.splits={train: [train]}", "data.val_fraction=1.0"], r"data.val_fraction must be in \[0, 1\)"),
        (["data.class_names=[]"], "data.class_names must list non-empty names"),
        (["data.class_names=[cat, dog, cat]"], "data.class_names repeats cat"),
    ],
)
def test_data_rules_between_keys_are_config_errors(overrides: list[str], words: str) -> None:
    with pytest.raises(ConfigError, match=rf"<defaults>: .*{words}"):
        load_config(None, overrides)


def test_data_defaults_and_a_carve_config_are_valid() -> None:
    data = load_config(None).data
    assert (data.class_names, data.skip_unknown_classes, data.val_fraction, data.val_seed) == ("auto", False, 0.0, 0)
    cfg = load_config(None, ["data.splits={train: [train], test: [test]}", "data.val_fraction=0.15"])
    assert cfg.data.val_fraction == 0.15
    assert load_config(None, ["data.class_names=[b, a]"]).data.class_names == ["b", "a"]


def test_raccoon_config_finds_the_shared_folder_from_the_repository_root() -> None:
    """data.root is read relative to the working folder (pipelines/prepare.py): `make` runs from the repo root."""
    cfg = load_config(REPO / "configs" / "raccoon.yaml")
    assert (REPO / cfg.data.root).resolve() == (REPO.parent / "shared" / "data" / "raccoon").resolve()
    assert (cfg.data.kind, cfg.data.class_names, cfg.data.val_fraction) == ("voc", "auto", 0.15)
    assert "val" not in cfg.data.splits
    custom = load_config(REPO / "configs" / "custom.yaml")
    assert (custom.data.class_names, custom.data.val_fraction) == ("auto", 0.15)


@pytest.mark.parametrize(
    "overrides, named",
    [
        (["pretrain.source=imagefolder"], "needs pretrain.root"),
        (["pretrain.val_fraction=0"], "pretrain.val_fraction must be in"),
        (["pretrain.high.size=100"], "pretrain.high: size must be a multiple of 32"),
        (["pretrain.low.min_crop=300", "pretrain.low.max_crop=200"], "pretrain.low: size must be"),
        (["pretrain.low.lr=0"], "pretrain.low: epochs and burn_in >= 0, lr and power > 0"),
        (["pretrain.low.epochs=0"], "pretrain.low.epochs must be at least 1"),
        (["pretrain.batch_size=0"], "pretrain.batch_size must be at least 1"),
        (["train.init_from=imagenet"], "train.init_from"),
    ],
)
def test_a_bad_pretrain_section_is_named(overrides, named):
    with pytest.raises(ConfigError, match=named):
        load_config(None, overrides)


def test_the_pretrain_defaults_are_darknets():
    cfg = load_config(None, [])
    low, high = cfg.pretrain.low, cfg.pretrain.high
    assert (low.lr, low.power, low.burn_in, low.size, low.min_crop, low.max_crop) == (0.1, 4.0, 1000, 256, 128, 448)
    assert (high.lr, high.size, high.min_crop, high.max_crop) == (0.001, 448, 448, 512)  # darknet19_448.cfg
    assert high.size == 2 * 224 and high.epochs * 16 == low.epochs  # the paper: 448 after 224, 10 of 160 epochs
    assert cfg.pretrain.batch_size * cfg.pretrain.num_workers == 128  # the batch Darknet's rates are for


def test_a_missing_tree_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"model.tree: no file .*none.tree"):
        load_config(None, [f"model.tree={tmp_path / 'none.tree'}"])


def test_evaluating_by_the_tree_walk_is_a_config_error():
    with pytest.raises(ConfigError, match="evaluate.tree_walk labels boxes with tree nodes"):
        load_config(None, ["evaluate.tree_walk=true"])
