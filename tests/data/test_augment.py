"""yolov2/data/augment.py: multi-scale sizes and the augmentation options from the config."""

from __future__ import annotations

import pytest

from pipelines.config import TrainConfig
from yolov2.data.augment import Augmentation, MultiScaleSchedule


def test_multiscale_same_on_every_rank_and_changes_every_period():
    ranks = [MultiScaleSchedule(320, 608, 32, every=10, seed=42) for _ in range(3)]
    steps = list(range(500))
    sizes = [[r.size_at(i) for i in steps] for r in ranks]
    assert sizes[0] == sizes[1] == sizes[2]
    assert sizes[0] == [ranks[0].size_at(i) for i in reversed(steps)][::-1]  # pure: order of calls is irrelevant
    assert all(320 <= s <= 608 and s % 32 == 0 for s in sizes[0])
    for i in steps:
        if i % 10:
            assert sizes[0][i] == sizes[0][i - 1]
    assert len(set(sizes[0])) >= 7  # 50 periods over 10 sizes
    changes = sum(sizes[0][i] != sizes[0][i - 10] for i in range(10, 500, 10))
    assert changes >= 30
    other_seed = [MultiScaleSchedule(320, 608, 32, every=10, seed=43).size_at(i) for i in steps]
    assert other_seed != sizes[0]


def test_schedules_from_config():
    cfg = TrainConfig()
    sched = MultiScaleSchedule.from_config(cfg)
    assert (sched.min_size, sched.max_size, sched.step, sched.every, sched.seed) == (320, 608, 32, 10, 0)
    cfg.multiscale = False
    assert MultiScaleSchedule.from_config(cfg) is None
    aug = Augmentation.from_config(cfg.augmentation, cfg.use_gpu)
    assert (aug.jitter, aug.hue, aug.saturation, aug.exposure, aug.device_color) == (0.3, 0.1, 1.5, 1.5, False)
    cfg.augmentation.augment, cfg.use_gpu = "none", True
    assert Augmentation.from_config(cfg.augmentation, cfg.use_gpu).jitter == 0.0
    with pytest.raises(Exception, match="multiple"):
        MultiScaleSchedule(320, 600, 32)
