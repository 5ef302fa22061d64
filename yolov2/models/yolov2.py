"""The YOLOv2 detector: backbone, (optional SPPF), two 3x3 head convs, passthrough, fuse conv, prediction.

Layer for layer this is ``yolov2-voc.cfg`` after the Darknet-19 body (REFERENCE.md, "Network"):
conv 3x3/1024, conv 3x3/1024; route back to the stride-16 map, conv 1x1/64, reorg /2; route
[reorg, 1024 map] (reorg channels first); conv 3x3/1024; conv 1x1 linear to A*(5+C).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import torch
from torch import nn

from yolov2.models.heads import make_head
from yolov2.models.layers import SPPF, ConvPair, DarknetConv, Reorg, ReorgMode, chain_darknet_layers, scaled_channels

Anchors = list[tuple[float, float]]


class YOLOv2(nn.Module):
    """Backbone + YOLOv2 passthrough head.

    ``backbone(x)`` must return (stride-16 map, stride-32 map) and expose ``passthrough_channels``,
    ``out_channels`` and ``darknet_layers()``.
    x (Tensor[B, 3, H, W]), H and W divisible by 32 -> Tensor[B, A*(5+C), H/32, W/32], anchor-major
    (per anchor: tx, ty, tw, th, objectness logit, C class logits), as Darknet's region layer reads it.
    """

    stride = 32

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        num_anchors: int = 5,
        width_multiplier: float = 1.0,
        reorg: ReorgMode = "darknet",
        sppf: bool = False,
        decoupled_head: bool = False,
        anchors: Anchors | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.default_anchors = anchors
        head_c = scaled_channels(1024, width_multiplier)
        route_c = scaled_channels(64, width_multiplier)
        self.backbone = backbone
        # plain ints on every backbone (nn.Module types unknown attributes as Tensor | Module)
        c32 = cast(int, backbone.out_channels)
        self.neck = SPPF(c32, c32) if sppf else nn.Identity()
        self.head1 = DarknetConv(c32, head_c, 3)
        self.head2 = DarknetConv(head_c, head_c, 3)
        self.passthrough = DarknetConv(cast(int, backbone.passthrough_channels), route_c, 1)
        self.reorg = Reorg(2, reorg)
        self.fuse = DarknetConv(route_c * 4 + head_c, head_c, 3)
        self.pred = make_head(head_c, num_anchors, num_classes, decoupled_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p16, p32 = self.backbone(x)
        y = self.head2(self.head1(self.neck(p32)))
        r = self.reorg(self.passthrough(p16))
        return self.pred(self.fuse(torch.cat([r, y], dim=1)))

    def darknet_layers(self) -> Iterator[ConvPair]:
        """(conv, bn or None) in Darknet cfg order: backbone, [SPPF], head1, head2, passthrough, fuse, prediction."""
        yield from chain_darknet_layers(
            self.backbone, self.neck, self.head1, self.head2, self.passthrough, self.fuse, self.pred
        )
