"""SGD as Darknet trains YOLOv2, and its learning-rate schedules.

Darknet (``yolov2-voc.cfg``): momentum 0.9, decay 0.0005, learning_rate 0.001, ``burn_in=1000``
(lr x (step/burn_in)^4 during burn-in), then ``policy=steps`` (multiply by each scale when the step
passes each boundary). Weight decay applies to conv weights only, not to batch-norm parameters or
biases (standard practice; Darknet decays BN scales too, which hurts small batches).

Darknet-19's classifier cfgs (``darknet19.cfg``, ``darknet19_448.cfg``) use ``policy=poly`` with ``power=4``
instead: :func:`darknet_poly_lr`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from yolov2.errors import ConfigError


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: conv/linear weights with ``weight_decay``; BN parameters and biases without."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            is_norm = isinstance(module, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.SyncBatchNorm))
            (no_decay if is_norm or name == "bias" else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_sgd(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD with momentum over :func:`param_groups`, fused: one kernel per tensor for decay, momentum and update.

    The default on CPU is a Python loop of three to four ops per tensor; on a 2-core CPU it took a third of
    yolov2-voc's forward + backward time per step, the fused kernel under a quarter of that
    (``benchmarks/train.py``). The fused kernel exists on CPU and CUDA and works with ``GradScaler``.
    """
    return torch.optim.SGD(param_groups(model, weight_decay), lr=lr, momentum=momentum, fused=True)


def build_adamw(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999)
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (decoupled decay, not on BN parameters or biases), fused.

    Why it is offered next to Darknet's SGD: from scratch (no ImageNet backbone), Darknet's recipe needs tens of
    thousands of steps; a CPU demo has a few thousand, and Adam's per-parameter step sizes learn the small
    detector's classifier far sooner. Note AdamW's ``weight_decay`` is multiplied by ``lr`` (decoupled): 5e-4
    here is much weaker than SGD's 5e-4 (the demo config uses 0.01).
    """
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, fused=True)


def build_optimizer(
    model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """The optimizer ``TrainConfig.optimizer`` names: ``"sgd"`` (Darknet's, ``momentum``) or ``"adamw"``
    (``momentum`` is Adam's beta1)."""
    if name == "sgd":
        return build_sgd(model, lr, momentum, weight_decay)
    if name == "adamw":
        return build_adamw(model, lr, weight_decay, betas=(momentum, 0.999))
    raise ConfigError(f"train.optimizer must be 'sgd' or 'adamw', got {name!r}")


def darknet_steps_lr(step: int, base_lr: float, burn_in: int, steps: Sequence[int], scales: Sequence[float]) -> float:
    """Darknet's ``policy=steps`` with ``burn_in``: the learning rate for optimizer step ``step`` (0-based)."""
    if burn_in > 0 and step < burn_in:
        return base_lr * ((step + 1) / burn_in) ** 4
    lr = base_lr
    for boundary, scale in zip(steps, scales):
        if step >= boundary:
            lr *= scale
    return lr


def darknet_poly_lr(step: int, base_lr: float, burn_in: int, max_batches: int, power: float = 4.0) -> float:
    """Darknet's ``policy=poly`` with ``burn_in``: the learning rate for optimizer step ``step`` (0-based).

    Darknet's ``get_current_rate`` with ``batch = step + 1`` (Darknet counts the images seen before updating,
    so its first update already sees batch 1, as in :func:`darknet_steps_lr`): ``base_lr * (batch / burn_in) **
    power`` while ``batch < burn_in`` (the same ``power`` as the decay: quartic for Darknet-19's cfgs), then
    ``base_lr * (1 - batch / max_batches) ** power``. So the last step, ``max_batches - 1``, runs at rate 0, as in
    Darknet; steps past it stay at 0 (Darknet stops there; the formula would turn negative or NaN).
    """
    if max_batches <= 0 or burn_in < 0 or power < 0:
        raise ConfigError(
            f"poly schedule needs max_batches > 0, burn_in >= 0, power >= 0; got max_batches={max_batches}, "
            f"burn_in={burn_in}, power={power}"
        )
    batch = step + 1
    if batch < burn_in:
        return base_lr * (batch / burn_in) ** power
    return base_lr * max(0.0, 1.0 - batch / max_batches) ** power


def cosine_lr(step: int, base_lr: float, warmup: int, total_steps: int, final_fraction: float = 0.05) -> float:
    """Linear warm-up then cosine decay to ``final_fraction * base_lr`` at ``total_steps``."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return base_lr * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
