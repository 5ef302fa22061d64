"""Model size and cost: parameters, output shape, and GFLOPs counted the way Darknet prints them.

FLOP convention: Darknet's ``make_convolutional_layer`` prints, per conv layer,
``2.0 * n * size*size * c/groups * out_h*out_w / 1e9`` "BFLOPs", i.e. 2 x multiply-accumulates, and
sums only conv layers (maxpool, route, reorg and region cost nothing in that total). We count the
same: conv MACs (for one image) via forward hooks, GFLOPs = 2 * MACs / 1e9. Batch norm, activations
and bias adds are not counted, as in Darknet.

Check against Darknet's published figures (pjreddie.com/darknet/yolo): yolov2.cfg at 608 -> 62.94
(ours: 62.94), yolov2-tiny-voc.cfg at 416 -> 6.97 (ours: 6.97). yolov2-voc.cfg at 416 gives 29.36;
the site's "34.90" for YOLOv2 VOC is the older cfg whose reorg took the 512-channel map directly
(3072 channels into the fuse conv: +5.58 GFLOPs).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

FLOPS_CONVENTION = "2 * conv multiply-accumulates per image / 1e9 (Darknet's BFLOPs)"


def count_parameters(model: nn.Module) -> int:
    """Learnable parameters (BN running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


def conv_macs(model: nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Multiply-accumulates of every ``nn.Conv2d`` for one image of ``x`` (Tensor[B, C, H, W]), and
    the model's output. Per conv: out_channels * (in_channels/groups) * kh * kw * out_h * out_w."""
    total = 0

    def hook(module: nn.Conv2d, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += module.out_channels * (module.in_channels // module.groups) * kh * kw * out.shape[-2] * out.shape[-1]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        out = model(x)
    finally:
        for h in handles:
            h.remove()
    return total, out


def model_summary(model: nn.Module, input_size: int | tuple[int, int] = 416, in_channels: int = 3) -> dict[str, Any]:
    """JSON-able summary: ``params``, ``input_shape``, ``output_shape`` (for one image of
    ``input_size`` = side or (height, width)), ``conv_macs``, ``gflops`` and the FLOP convention.
    Runs one forward pass on zeros in eval mode under ``no_grad``; the model's mode is restored."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            macs, out = conv_macs(model, torch.zeros(1, in_channels, h, w, device=device, dtype=dtype))
    finally:
        model.train(was_training)
    return {
        "params": count_parameters(model),
        "input_shape": [1, in_channels, h, w],
        "output_shape": list(out.shape),
        "conv_macs": macs,
        "gflops": 2 * macs / 1e9,
        "flops_convention": FLOPS_CONVENTION,
    }
