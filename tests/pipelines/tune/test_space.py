"""pipelines/tune/space.py: the search space is checked when the config loads, and sampled from Ray's domains
with a seed (same seed, same trials; each trial different; learning rates on a log scale)."""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.cli_common import load_from_args
from pipelines.config import DEFAULT_SEARCH_SPACE, PipelineConfig, load_config
from pipelines.tune.space import Dimension, parse_space, ray_param_space, sample_trials, trial_config
from yolov2.errors import ConfigError

CFG = PipelineConfig()


def dims_of(space: dict[str, Any], cfg: PipelineConfig = CFG) -> list[Dimension]:
    return parse_space(space, cfg, "test.yaml")


def test_the_default_space_parses_in_order():
    dims = dims_of(DEFAULT_SEARCH_SPACE)
    assert [d.key for d in dims] == list(DEFAULT_SEARCH_SPACE)
    lr = dims[0]
    assert (lr.key, lr.sampler, lr.args, lr.log_scale) == ("train.lr", "loguniform", (1e-4, 1e-2), True)
    assert not dims[2].log_scale  # train.jitter: uniform
    assert all(hash(d) for d in dims)  # frozen: a choice of lists is kept as tuples
    assert load_config(None).tune.space == DEFAULT_SEARCH_SPACE


def test_same_seed_same_trials_other_seed_other_trials():
    dims = dims_of(DEFAULT_SEARCH_SPACE)
    first = sample_trials(dims, 8, seed=0)
    assert first == sample_trials(dims, 8, seed=0)
    assert first != sample_trials(dims, 8, seed=1)
    assert sample_trials(dims, 12, seed=0)[:8] == first  # a longer search keeps the first trials
    assert len({repr(sorted(t.items())) for t in first}) == 8  # no two trials alike
    for key in ("train.lr", "train.jitter", "train.hue"):
        assert len({t[key] for t in first}) == 8, key


def test_loguniform_spreads_over_decades():
    trials = sample_trials(dims_of({"train.lr": {"loguniform": [1e-4, 1e-2]}}), 200, seed=3)
    lrs = [t["train.lr"] for t in trials]
    assert all(type(v) is float and 1e-4 <= v <= 1e-2 for v in lrs)
    below = sum(v < 1e-3 for v in lrs)
    assert 70 <= below <= 130  # log scale: half below the geometric middle; a linear sampler gives ~18
    assert min(lrs) < 2e-4 and max(lrs) > 5e-3


def test_choice_and_randint_values():
    space = {
        "train.multiscale_sizes": {"choice": [[288, 448, 32], [320, 512, 32]]},
        "anchors.k": {"choice": [3, 5, 7, 9]},
        "train.batch_size": {"randint": [4, 9]},
        "loss.box_loss": {"choice": ["mse", "ciou"]},
    }
    trials = sample_trials(dims_of(space), 100, seed=0)
    sizes = [t["train.multiscale_sizes"] for t in trials]
    assert all(type(s) is list and all(type(v) is int for v in s) for s in sizes)
    assert {tuple(s) for s in sizes} == {(288, 448, 32), (320, 512, 32)}
    assert sizes[0] is not sizes[1]  # no list shared between trials
    assert {t["anchors.k"] for t in trials} == {3, 5, 7, 9}
    assert all(type(t["anchors.k"]) is int for t in trials)
    batches = {t["train.batch_size"] for t in trials}
    assert batches == set(range(4, 9)) and all(type(b) is int for b in batches)  # high excluded
    assert {t["loss.box_loss"] for t in trials} == {"mse", "ciou"}


def test_every_sampled_trial_builds_a_config():
    space = dict(DEFAULT_SEARCH_SPACE) | {"train.batch_size": {"randint": [4, 9]}, "loss.box_loss": {"choice": ["mse"]}}
    for t in sample_trials(dims_of(space), 20, seed=5):
        cfg = trial_config(CFG, t, "trial")
        assert cfg.train.loop.lr == t["train.lr"]
        assert cfg.train.weight_decay == t["train.weight_decay"]
        assert cfg.train.augmentation.jitter == t["train.jitter"]
        assert list(cfg.train.multiscale_sizes) == t["train.multiscale_sizes"]
        assert cfg.anchors.k == t["anchors.k"] and cfg.train.batch_size == t["train.batch_size"]
        assert cfg.loss.box_loss == "mse"


def test_ray_param_space_gives_rays_domains():
    from ray.tune.search.sample import Categorical, Float, Integer, LogUniform

    space = dict(DEFAULT_SEARCH_SPACE) | {"train.batch_size": {"randint": [4, 9]}}
    domains = ray_param_space(dims_of(space))
    assert list(domains) == list(space)
    lr, jitter, sizes, batch = (
        domains[k] for k in ("train.lr", "train.jitter", "train.multiscale_sizes", "train.batch_size")
    )
    assert isinstance(lr, Float) and isinstance(lr.sampler, LogUniform) and (lr.lower, lr.upper) == (1e-4, 1e-2)
    assert isinstance(jitter, Float) and not isinstance(jitter.sampler, LogUniform)
    assert (jitter.lower, jitter.upper) == (0.0, 0.3)
    assert isinstance(sizes, Categorical) and len(sizes.categories) == 3
    assert isinstance(batch, Integer) and (batch.lower, batch.upper) == (4, 9)


BAD_SPACES = [
    ({}, "tune.space"),
    ([["train.lr", 0.001]], "tune.space"),
    ({"train.lrr": {"loguniform": [1e-4, 1e-2]}}, "did you mean train.lr"),
    ({"model.width": {"uniform": [0.5, 1.0]}}, "tune.space.model.width"),
    ({"train": {"uniform": [0.5, 1.0]}}, "tune.space.train"),
    ({"train.jitter": {"normal": [0.0, 0.3]}}, "loguniform, uniform, choice, randint"),
    ({"train.jitter": {"uniform": [0.0, 0.3], "choice": [0.1]}}, "exactly one sampler"),
    ({"train.jitter": [0.0, 0.3]}, "tune.space.train.jitter"),
    ({"train.jitter": {"uniform": [0.3, 0.3]}}, "empty range"),
    ({"train.jitter": {"uniform": [0.3, 0.1]}}, "empty range"),
    ({"train.jitter": {"uniform": [0.0]}}, "two numbers"),
    ({"train.jitter": {"uniform": [0.0, 0.1, 0.2]}}, "two numbers"),
    ({"train.jitter": {"uniform": [False, True]}}, "two numbers"),
    ({"train.jitter": {"uniform": ["0", "1"]}}, "two numbers"),
    ({"train.weight_decay": {"loguniform": [0.0, 0.1]}}, "low > 0"),
    ({"train.batch_size": {"randint": [4.0, 9.0]}}, "two integers"),
    ({"train.batch_size": {"randint": [9, 4]}}, "empty range"),
    ({"train.batch_size": {"uniform": [4, 16]}}, "use randint or choice"),
    ({"anchors.k": {"choice": []}}, "non-empty list"),
    ({"anchors.k": {"choice": [3, "x"]}}, "'x'"),
    ({"train.multiscale_sizes": {"choice": [[320, 512]]}}, "[320, 512]"),
    ({"loss.box_loss": {"choice": ["mse", "giou"]}}, "'giou'"),
    ({"train.lr": {"uniform": [0.0, 0.01]}}, "sampled on a log scale: use loguniform"),
    ({"train.weight_decay": {"randint": [1, 3]}}, "sampled on a log scale: use loguniform"),
    ({"train.lr": {"choice": [0.0, 0.001]}}, "must be > 0"),
    ({"train.weight_decay": {"choice": [-1e-4, 1e-4]}}, "must be > 0"),
]


@pytest.mark.parametrize(("space", "message"), BAD_SPACES)
def test_bad_spaces_are_config_errors(space, message):
    with pytest.raises(ConfigError) as error:
        dims_of(space)
    text = str(error.value)
    assert "test.yaml" in text and message in text
    for key in space if isinstance(space, dict) else []:
        assert f"tune.space.{key}" in text


def test_anchors_k_with_pinned_anchors():
    pinned = dataclasses.replace(CFG, anchors=dataclasses.replace(CFG.anchors, pinned=[(1.0, 1.0), (3.0, 2.0)]))
    with pytest.raises(ConfigError, match=r"tune\.space\.anchors\.k: anchors\.pinned is set"):
        dims_of({"anchors.k": {"choice": [3, 5]}}, pinned)
    assert dims_of({"train.jitter": {"uniform": [0.0, 0.3]}}, pinned)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"train.lrr": {"loguniform": [1e-4, 1e-2]}}, r"tune\.space\.train\.lrr: unknown key"),
        ({"train.jitter": {"uniform": [0.3, 0.1]}}, r"tune\.space\.train\.jitter: empty range"),
        ({"train.lr": {"choice": [0.0, 0.001]}}, r"tune\.space\.train\.lr: every train\.lr must be > 0"),
    ],
)
def test_a_stage_command_rejects_a_bad_space_as_it_loads_the_config(tmp_path: Path, space, message):
    """``cli_common.load_from_args``: what full.py and every stage command run before Ray starts."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"tune": {"space": space}}))
    with pytest.raises(ConfigError, match=message) as error:
        load_from_args(argparse.Namespace(config=str(path), overrides=[], workspace=str(tmp_path / "ws")))
    assert str(path) in str(error.value)


def test_pinned_anchors_take_k_out_of_the_default_space_only():
    pinned = ["anchors.pinned=[[1.0, 1.0], [2.0, 2.0]]"]
    assert "anchors.k" not in load_config(None, pinned).tune.space
    with pytest.raises(ConfigError, match="anchors.pinned is set"):
        cfg = load_config(None, [*pinned, "tune.space={anchors.k: {choice: [3, 5]}}"])
        parse_space(cfg.tune.space, cfg, "test")


def test_load_config_takes_a_good_space(tmp_path: Path):
    space = {"train.lr": {"loguniform": [1.0e-3, 1.0e-1]}, "train.batch_size": {"randint": [4, 9]}}
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump({"tune": {"space": space, "num_trials": 3, "seed": 7}}))
    cfg = load_config(path)
    trials = sample_trials(parse_space(cfg.tune.space, cfg, str(path)), cfg.tune.num_trials, cfg.tune.seed)
    assert len(trials) == 3 and all(math.log10(t["train.lr"]) >= -3 for t in trials)
