"""Darknet-19, the YOLOv2 backbone: the first 18 conv layers of ``darknet19_448.cfg`` / ``yolov2-voc.cfg``.

It returns two maps: the stride-16 map after the 13th conv (26x26x512 at 416, the passthrough
source that ``[route] layers=-9`` reaches back to) and the stride-32 map after the 18th
(13x13x1024 at 416). These 18 convs (23 Darknet layers counting the maxpools) are what
``darknet19_448.conv.23`` holds.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from yolov2.models.layers import ConvPair, DarknetConv, DarknetMaxPool, chain_darknet_layers, scaled_channels

# (filters, size) per conv; "M" is a 2x2/2 maxpool. Split where the passthrough is taken.
STAGE16 = [(32, 3), "M", (64, 3), "M", (128, 3), (64, 1), (128, 3), "M", (256, 3), (128, 1), (256, 3), "M",
           (512, 3), (256, 1), (512, 3), (256, 1), (512, 3)]  # fmt: skip
STAGE32 = ["M", (1024, 3), (512, 1), (1024, 3), (512, 1), (1024, 3)]


def _make_stage(spec: list, in_channels: int, width_multiplier: float) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    c = in_channels
    for item in spec:
        if item == "M":
            layers.append(DarknetMaxPool(2, 2))
        else:
            filters, size = item
            out = scaled_channels(filters, width_multiplier)
            layers.append(DarknetConv(c, out, size))
            c = out
    return nn.Sequential(*layers), c


class Darknet19(nn.Module):
    """Darknet-19 without its classifier.

    x (Tensor[B, in_channels, H, W]), H and W divisible by 32 ->
    (Tensor[B, passthrough_channels, H/16, W/16], Tensor[B, out_channels, H/32, W/32]);
    512 and 1024 channels at ``width_multiplier=1``.
    """

    def __init__(self, in_channels: int = 3, width_multiplier: float = 1.0) -> None:
        super().__init__()
        self.stage16, self.passthrough_channels = _make_stage(STAGE16, in_channels, width_multiplier)
        self.stage32, self.out_channels = _make_stage(STAGE32, self.passthrough_channels, width_multiplier)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p16 = self.stage16(x)
        return p16, self.stage32(p16)

    def darknet_layers(self) -> Iterator[ConvPair]:
        yield from chain_darknet_layers(self.stage16, self.stage32)
