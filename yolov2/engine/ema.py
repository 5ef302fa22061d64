"""Exponential moving average of model weights (as YOLOX/YOLOv5 keep it), for evaluation."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from yolov2.engine.checkpoint import unwrap

_COPIED_BUFFERS = ("running_mean", "running_var")  # BN statistics: copied, not averaged


class ModelEMA:
    """Keeps ``ema = d * ema + (1 - d) * model`` after each optimizer step.

    The decay ramps up as ``decay * (1 - exp(-updates / ramp))`` so the average is not dominated by
    the random initial weights early in training. YOLOX's ``ramp`` of 2000 updates suits runs of tens of
    thousands of steps; a run of a few hundred (a small dataset) needs a shorter one, or its average stays
    close to the raw weights throughout. Buffers (BN statistics) are copied, not averaged.
    The update is two ``torch._foreach_*`` calls over all tensors (one per-tensor Python loop over
    ``state_dict`` took as long as the SGD step on a 2-core CPU).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, updates: int = 0, ramp: float = 2000.0) -> None:
        self.module = copy.deepcopy(unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        if ramp <= 0:
            raise ValueError(f"EMA ramp must be positive (updates), got {ramp}")
        self.decay = decay
        self.updates = updates
        self.ramp = ramp

    def current_decay(self) -> float:
        return self.decay * (1 - math.exp(-self.updates / self.ramp))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step towards ``model``'s weights (a DDP wrapper is unwrapped)."""
        self.updates += 1
        d = self.current_decay()
        averaged, averaged_src, copied, copied_src = _paired_tensors(self.module, unwrap(model))
        if averaged:
            torch._foreach_lerp_(averaged, averaged_src, 1.0 - d)  # ema + (1 - d) (src - ema)
        if copied:
            torch._foreach_copy_(copied, copied_src)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay, "ramp": self.ramp}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
        self.decay = float(state["decay"])
        self.ramp = float(state.get("ramp", self.ramp))  # checkpoints before the ramp was a setting: unchanged


def _paired_tensors(ema: nn.Module, model: nn.Module) -> tuple[list, list, list, list]:
    """(averaged, their sources, copied, their sources): floating parameters and buffers other than BN
    statistics are averaged; BN statistics and integer buffers are copied. Raises if the modules differ."""
    averaged, averaged_src, copied, copied_src = [], [], [], []
    source: dict[str, torch.Tensor] = dict(model.named_parameters())
    source.update(model.named_buffers())
    for name, value in [*ema.named_parameters(), *ema.named_buffers()]:
        if name not in source:
            raise KeyError(f"EMA: the model has no tensor {name!r} (EMA built from a different model?)")
        src = source[name].detach()
        if value.dtype.is_floating_point and name.rsplit(".", 1)[-1] not in _COPIED_BUFFERS:
            averaged.append(value)
            averaged_src.append(src.to(value.dtype))
        else:
            copied.append(value)
            copied_src.append(src)
    return averaged, averaged_src, copied, copied_src
