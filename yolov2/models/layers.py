"""Darknet's building blocks in PyTorch: the [convolutional] block, its maxpool, the reorg, and SPPF.

Every block here reproduces Darknet's CPU arithmetic (``src/convolutional_layer.c``, ``src/blas.c``,
``src/maxpool_layer.c``) so that weights loaded from a Darknet ``.weights`` file give Darknet's outputs.
Tensors are NCHW throughout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

DARKNET_BN_EPS = 1e-6  # pjreddie's normalize_cpu: (x - mean) / (sqrt(variance) + .000001f)
ALEXEYAB_BN_EPS = 1e-5  # AlexeyAB's fork: (x - mean) / sqrt(variance + .00001f)
LEAKY_SLOPE = 0.1

Activation = Literal["leaky", "linear", "relu", "logistic"]
ReorgMode = Literal["darknet", "pixel_unshuffle"]
BatchNormFormula = Literal["darknet", "alexeyab"]
BATCH_NORM_FORMULAS: tuple[str, ...] = ("darknet", "alexeyab")
ConvPair = tuple[nn.Conv2d, "nn.BatchNorm2d | None"]


class DarknetBatchNorm2d(nn.BatchNorm2d):
    """Batch norm that, at inference, divides the way the chosen Darknet does.

    With rolling statistics (eval mode) the output is ``(x - mean) / d * scale + shift`` with
    ``d = sqrt(var) + 1e-6`` for ``formula="darknet"`` (pjreddie's ``normalize_cpu``, ``src/blas.c``: what
    ``yolov2-voc.weights`` and ``darknet19_448.conv.23`` were trained with) or ``d = sqrt(var + 1e-5)`` for
    ``"alexeyab"`` (AlexeyAB's fork). PyTorch's ``sqrt(var + eps)`` equals neither, and filters with a small
    rolling variance (a few in every trained network) then give other outputs than Darknet.

    Training mode is PyTorch's: the batch mean and variance, ``sqrt(var + 1e-6)``, rolling statistics with
    momentum 0.1. pjreddie's Darknet trains on the CPU with the batch mean and unbiased variance (1 / (N - 1)),
    the same ``sqrt(var) + 1e-6`` as at inference, and rolling statistics .99 old + .01 new
    (``forward_batchnorm_layer``, ``src/batchnorm_layer.c``; ``mean_cpu``/``variance_cpu``, ``src/blas.c``); its
    GPU path since 2017 uses ``sqrt(var + 1e-5)`` in training (``blas_kernels.cu``, or cuDNN). Only the inference
    arithmetic has to be Darknet's for its weights to give its outputs; the state dict is ``nn.BatchNorm2d``'s.
    """

    def __init__(self, num_features: int, formula: BatchNormFormula = "darknet") -> None:
        super().__init__(num_features, eps=DARKNET_BN_EPS)
        self.formula = check_batch_norm_formula(formula)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.running_var is None:
            return super().forward(x)
        # torch's kernel computes sqrt(v + 0); v is chosen so that root is this formula's denominator.
        return F.batch_norm(x, self.running_mean, self.inference_variance(), self.weight, self.bias, False, 0.0, 0.0)

    def inference_variance(self) -> torch.Tensor:
        """The variance whose square root is the formula's denominator (eps included)."""
        assert self.running_var is not None
        if self.formula == "darknet":
            return (self.running_var.sqrt() + DARKNET_BN_EPS).square()
        return self.running_var + ALEXEYAB_BN_EPS

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, formula={self.formula}"


def check_batch_norm_formula(formula: str) -> BatchNormFormula:
    if formula not in BATCH_NORM_FORMULAS:
        raise ValueError(
            f"unknown batch-norm formula {formula!r}; use 'darknet' (pjreddie's sqrt(var) + 1e-6) "
            "or 'alexeyab' (AlexeyAB's sqrt(var + 1e-5))"
        )
    return formula  # type: ignore[return-value]


def set_batch_norm_formula(model: nn.Module, formula: BatchNormFormula) -> nn.Module:
    """Make every Darknet batch norm in ``model`` use ``formula`` at inference; returns ``model``."""
    formula = check_batch_norm_formula(formula)
    for module in model.modules():
        if isinstance(module, DarknetBatchNorm2d):
            module.formula = formula
    return model


class DarknetConv(nn.Module):
    """Darknet's ``[convolutional]`` layer: conv, then batch norm (if any), then the activation.

    Padding is ``size // 2`` (Darknet's ``pad=1``). With batch norm the conv has no bias: Darknet's
    ``biases`` then play the role of the BN shift (``bn.bias``), as in its ``.weights`` layout; the batch
    norm is a :class:`DarknetBatchNorm2d`.
    x (Tensor[B, in_channels, H, W]) -> Tensor[B, out_channels, H', W'] with H' = (H + 2*(size//2) - size)//stride + 1.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        size: int,
        stride: int = 1,
        batch_normalize: bool = True,
        activation: Activation = "leaky",
        groups: int = 1,
        padding: int | None = None,
        bn_formula: BatchNormFormula = "darknet",
    ) -> None:
        super().__init__()
        if activation not in ("leaky", "linear", "relu", "logistic"):
            raise ValueError(f"unsupported activation {activation!r}; use leaky, linear, relu or logistic")
        pad = size // 2 if padding is None else padding
        self.conv = nn.Conv2d(in_channels, out_channels, size, stride, pad, groups=groups, bias=not batch_normalize)
        self.bn = DarknetBatchNorm2d(out_channels, bn_formula) if batch_normalize else None
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.activation == "leaky":
            return F.leaky_relu(x, LEAKY_SLOPE)
        if self.activation == "relu":
            return F.relu(x)
        if self.activation == "logistic":
            return torch.sigmoid(x)
        return x

    def darknet_layers(self) -> Iterator[ConvPair]:
        """This layer's (conv, bn or None), as one entry of a Darknet ``.weights`` file."""
        yield self.conv, self.bn


def chain_darknet_layers(*modules: nn.Module) -> Iterator[ConvPair]:
    """(conv, bn or None) of each module in turn, in the order given (= Darknet cfg order).

    Each module is a :class:`DarknetConv` or anything else with a ``darknet_layers()`` method;
    ``nn.Sequential``/``nn.ModuleList`` containers are walked in their order.
    """
    for module in modules:
        if hasattr(module, "darknet_layers"):
            # nn.Module.__getattr__ is typed as returning a Tensor or Module; this is a method
            yield from cast(Callable[[], Iterator[ConvPair]], module.darknet_layers)()
        elif isinstance(module, (nn.Sequential, nn.ModuleList)):
            yield from chain_darknet_layers(*module)
        elif any(True for _ in module.parameters()):
            raise TypeError(f"{type(module).__name__} has parameters but no darknet_layers() method")


class DarknetMaxPool(nn.Module):
    """Darknet's ``[maxpool]``: total padding ``padding`` (default ``size - 1``), ``padding // 2`` of it
    on the top/left, the rest on the bottom/right, padded cells never win (``-FLT_MAX`` in Darknet).

    Output side = (side + padding - size) // stride + 1 (``make_maxpool_layer``): 2x2/2 halves an even
    side and gives ceil(side / 2) for an odd one; yolov2-tiny's 2x2/1 keeps 13x13 at 13x13 by
    padding one row and column on the bottom/right.
    """

    def __init__(self, size: int, stride: int, padding: int | None = None) -> None:
        super().__init__()
        self.size = size
        self.stride = stride
        self.padding = size - 1 if padding is None else padding
        self.pad_before = self.padding // 2
        self.pad_after = self.padding - self.pad_before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_before == 0 and self.size == self.stride and self.pad_after == self.size - 1:
            # The 2x2/2 case without a padded copy. Sides divisible by the stride (always, for inputs
            # divisible by 32) need no padding at all; plain pooling there keeps the output size a
            # simple expression (H/2), which torch.export / ONNX can carry as a dynamic shape.
            if x.shape[-2] % self.stride == 0 and x.shape[-1] % self.stride == 0:
                return F.max_pool2d(x, self.size, self.stride)
            return F.max_pool2d(x, self.size, self.stride, ceil_mode=True)
        pads = (self.pad_before, self.pad_after, self.pad_before, self.pad_after)
        return F.max_pool2d(F.pad(x, pads, value=float("-inf")), self.size, self.stride)


def darknet_reorg(x: torch.Tensor, stride: int = 2) -> torch.Tensor:
    """Darknet's passthrough reorg: exactly ``reorg_cpu(x, w, h, c, batch, stride, forward=0, out)``.

    Darknet reads the input buffer as if it had shape (C/s², H*s, W*s) and gathers from it in the
    (C, H, W) order of the input; the result buffer is then read as (C*s², H/s, W/s). This is NOT the
    ``pixel_unshuffle`` channel order. As a view: x[b, c2, j*s+dy, i*s+dx] (in the (C/s², H*s, W*s)
    reading) lands at flat position [b, (dy*s + dx)*(C/s²) + c2, j, i] of the (C, H, W) buffer.
    x (Tensor[B, C, H, W]), C divisible by s², H and W by s -> Tensor[B, C*s², H/s, W/s].
    """
    b, c, h, w = x.shape
    s = stride
    # flatten/unflatten (rather than reshape) so torch.export keeps H and W dynamic without guards.
    y = x.flatten(1).unflatten(1, (c // (s * s), h, s, w, s))  # (b, c2, j, dy, i, dx): the fake view
    y = y.permute(0, 3, 5, 1, 2, 4)  # (b, dy, dx, c2, j, i): the flat order of Darknet's output buffer
    return y.flatten(1).unflatten(1, (c * s * s, h // s, w // s))


class Reorg(nn.Module):
    """The passthrough space-to-depth: Darknet's memory order, or plain ``pixel_unshuffle``.

    ``mode="darknet"`` is required to use Darknet weights; ``"pixel_unshuffle"`` is the conventional
    order (same channel count) for models trained from scratch.
    x (Tensor[B, C, H, W]) -> Tensor[B, C*stride², H/stride, W/stride].
    """

    def __init__(self, stride: int = 2, mode: ReorgMode = "darknet") -> None:
        super().__init__()
        if mode not in ("darknet", "pixel_unshuffle"):
            raise ValueError(f"unknown reorg mode {mode!r}; use 'darknet' or 'pixel_unshuffle'")
        self.stride = stride
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "darknet":
            return darknet_reorg(x, self.stride)
        return F.pixel_unshuffle(x, self.stride)


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast (YOLOv5): 1x1 to c/2, three chained 5x5/1 max pools, concat, 1x1.

    The "optimized YOLOv2" neck: widens the receptive field of the stride-32 map at little cost.
    x (Tensor[B, C, H, W]) -> Tensor[B, out_channels, H, W].
    """

    def __init__(self, in_channels: int, out_channels: int, pool_size: int = 5) -> None:
        super().__init__()
        hidden = in_channels // 2
        self.cv1 = DarknetConv(in_channels, hidden, 1)
        self.cv2 = DarknetConv(hidden * 4, out_channels, 1)
        self.pool_size = pool_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        k = self.pool_size
        p1 = F.max_pool2d(x, k, 1, k // 2)
        p2 = F.max_pool2d(p1, k, 1, k // 2)
        p3 = F.max_pool2d(p2, k, 1, k // 2)
        return self.cv2(torch.cat([x, p1, p2, p3], dim=1))

    def darknet_layers(self) -> Iterator[ConvPair]:
        yield from chain_darknet_layers(self.cv1, self.cv2)


def scaled_channels(channels: int, width_multiplier: float, divisor: int = 8) -> int:
    """Channel count narrowed by ``width_multiplier``, rounded to a multiple of ``divisor`` (at least
    ``divisor``), so the reorg's C/4 stays whole. ``width_multiplier=1`` returns ``channels`` as is."""
    if width_multiplier == 1.0:
        return channels
    if width_multiplier <= 0:
        raise ValueError(f"width_multiplier must be > 0, got {width_multiplier}")
    return max(divisor, int(channels * width_multiplier / divisor + 0.5) * divisor)
