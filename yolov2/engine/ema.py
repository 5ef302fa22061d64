"""Exponential moving average of model weights (as YOLOX/YOLOv5 keep it), for evaluation."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA:
    """Keeps ``ema = d * ema + (1 - d) * model`` after each optimizer step.

    The decay ramps up as ``decay * (1 - exp(-updates / 2000))`` so the average is not dominated by
    the random initial weights early in training. Buffers (BN statistics) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, updates: int = 0) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = updates

    def current_decay(self) -> float:
        return self.decay * (1 - math.exp(-self.updates / 2000))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        model_state = model.state_dict()
        for name, value in self.module.state_dict().items():
            source = model_state[name].detach()
            if value.dtype.is_floating_point and name.rsplit(".", 1)[-1] not in ("running_mean", "running_var"):
                value.mul_(d).add_(source.to(value.dtype), alpha=1 - d)
            else:
                value.copy_(source)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
        self.decay = float(state["decay"])
