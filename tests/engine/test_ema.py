"""ModelEMA against the per-tensor formula written out: ema = d * ema + (1 - d) * model, BN statistics copied."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from yolov2.engine.ema import ModelEMA


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


class _Wrapper(nn.Module):  # stands in for DDP: the real model under .module
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


@pytest.mark.parametrize("ramp", [2000.0, 3.0])  # YOLOX's, and a short run's: the decay differs at every step
def test_update_matches_the_formula_and_copies_bn_statistics(ramp):
    model = _model()
    ema = ModelEMA(model, decay=0.9, ramp=ramp)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    for step in range(1, 4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model[1].running_mean.add_(1.0)
            model[1].num_batches_tracked += 1
        ema.update(_Wrapper(model) if step == 2 else model)  # a DDP-style wrapper is unwrapped
        d = 0.9 * (1 - math.exp(-step / ramp))
        for name, value in model.state_dict().items():
            if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
                reference[name] = value.clone()
            else:
                reference[name] = d * reference[name] + (1 - d) * value
    got = ema.module.state_dict()
    assert got.keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-6, msg=name)
    assert int(got["1.num_batches_tracked"]) == 3
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_state_dict_round_trip():
    model = _model()
    ema = ModelEMA(model, decay=0.99, ramp=50.0)
    ema.update(model)
    other = ModelEMA(copy.deepcopy(model), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1 and other.decay == 0.99 and other.ramp == 50.0
    for a, b in zip(ema.module.state_dict().values(), other.module.state_dict().values()):
        assert torch.equal(a, b)


def test_a_ramp_that_is_not_positive_is_refused():
    with pytest.raises(ValueError, match="ramp"):
        ModelEMA(_model(), ramp=0)
