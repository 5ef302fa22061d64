"""Tiny YOLOv2 (``yolov2-tiny-voc.cfg``, ``yolov2-tiny.cfg``): no passthrough, six conv+maxpool pairs.

Body (:class:`TinyBackbone`, the detector's ``body``, also reachable as ``backbone``): conv 3x3/16,
max 2/2, 32, max, 64, max, 128, max, 256, max, 512, max 2x2/1 (padded so the 13x13 map stays 13x13),
conv 3x3/1024; head: conv 3x3/``head_channels`` (1024 for VOC, 512 for COCO), then the 1x1 linear
prediction conv.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from yolov2.models.heads import make_head
from yolov2.models.layers import SPPF, ConvPair, DarknetConv, DarknetMaxPool, chain_darknet_layers, scaled_channels

Anchors = list[tuple[float, float]]

# Darknet's anchors in yolov2-tiny-voc.cfg (grid units at stride 32).
TINY_VOC_ANCHORS = [(1.08, 1.19), (3.42, 4.41), (6.63, 11.38), (9.42, 5.11), (16.62, 10.52)]


class TinyBackbone(nn.Sequential):
    """The tiny model's body: six conv 3x3 + maxpool pairs, then conv 3x3/1024 (7 Darknet conv layers).

    An ``nn.Sequential`` (not a module holding one) so the detector's state-dict keys stay ``body.<i>...``,
    which its Darknet weights and checkpoints rely on.
    x (Tensor[B, in_channels, H, W]), H and W divisible by 32 -> Tensor[B, out_channels, H/32, W/32]
    (1024 channels at ``width_multiplier=1``).
    """

    def __init__(self, in_channels: int = 3, width_multiplier: float = 1.0) -> None:
        layers: list[nn.Module] = []
        c = in_channels
        for i, filters in enumerate((16, 32, 64, 128, 256, 512)):
            out = scaled_channels(filters, width_multiplier)
            layers += [DarknetConv(c, out, 3), DarknetMaxPool(2, 2 if i < 5 else 1)]
            c = out
        out = scaled_channels(1024, width_multiplier)
        layers.append(DarknetConv(c, out, 3))
        super().__init__(*layers)
        self.out_channels = out

    def darknet_layers(self) -> Iterator[ConvPair]:
        """(conv, bn or None) in Darknet cfg order."""
        yield from chain_darknet_layers(*self)


class TinyYOLOv2(nn.Module):
    """x (Tensor[B, 3, H, W]), H and W divisible by 32 -> Tensor[B, A*(5+C), H/32, W/32], anchor-major."""

    stride = 32

    def __init__(
        self,
        num_classes: int,
        num_anchors: int = 5,
        head_channels: int = 1024,
        width_multiplier: float = 1.0,
        sppf: bool = False,
        decoupled_head: bool = False,
        anchors: Anchors | None = None,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.default_anchors = anchors
        self.body = TinyBackbone(in_channels, width_multiplier)
        out = self.body.out_channels
        self.neck = SPPF(out, out) if sppf else nn.Identity()
        head_c = scaled_channels(head_channels, width_multiplier)
        self.head1 = DarknetConv(out, head_c, 3)
        self.pred = make_head(head_c, num_anchors, num_classes, decoupled_head)

    @property
    def backbone(self) -> TinyBackbone:
        """The body under the name the other detectors give their backbone (the same module, so the same
        tensors): a pretrained backbone's hand-over is ``detector.backbone.load_state_dict(...)`` for all."""
        return self.body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pred(self.head1(self.neck(self.body(x))))

    def darknet_layers(self) -> Iterator[ConvPair]:
        """(conv, bn or None) in Darknet cfg order."""
        yield from chain_darknet_layers(self.body, self.neck, self.head1, self.pred)
