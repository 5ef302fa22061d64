"""The prediction heads: Darknet's single 1x1 linear conv, or a decoupled head (box/objectness and
class in separate conv towers) re-interleaved into the same anchor-major layout.

Output layout (both heads, as Darknet's region layer reads it): channel a*(5+C) + k of
Tensor[B, A*(5+C), H, W] is, for anchor a, k = 0..3 -> tx, ty, tw, th; k = 4 -> objectness logit;
k = 5.. -> class logits.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from yolov2.models.layers import ConvPair, DarknetConv, chain_darknet_layers


class DetectionHead(nn.Module):
    """Darknet's last layer: 1x1 conv with bias, no batch norm, linear activation.

    x (Tensor[B, in_channels, H, W]) -> Tensor[B, A*(5+C), H, W].
    """

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int) -> None:
        super().__init__()
        out = num_anchors * (5 + num_classes)
        self.pred = DarknetConv(in_channels, out, 1, batch_normalize=False, activation="linear")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pred(x)

    def darknet_layers(self) -> Iterator[ConvPair]:
        yield from chain_darknet_layers(self.pred)


class DecoupledHead(nn.Module):
    """Box+objectness and class predictions from separate 3x3 conv towers (YOLOX-style decoupling).

    The two outputs are interleaved back per anchor, so the result has exactly the layout of
    :class:`DetectionHead` and the loss and decoder need not know which head made it.
    x (Tensor[B, in_channels, H, W]) -> Tensor[B, A*(5+C), H, W].
    """

    def __init__(
        self, in_channels: int, num_anchors: int, num_classes: int, hidden_channels: int | None = None
    ) -> None:
        super().__init__()
        hidden = hidden_channels or max(32, in_channels // 4)
        self.num_anchors = num_anchors
        self.num_classes = num_classes
        self.box_tower = DarknetConv(in_channels, hidden, 3)
        self.box_pred = DarknetConv(hidden, num_anchors * 5, 1, batch_normalize=False, activation="linear")
        self.cls_tower = DarknetConv(in_channels, hidden, 3)
        self.cls_pred = DarknetConv(hidden, num_anchors * num_classes, 1, batch_normalize=False, activation="linear")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        a = self.num_anchors
        box = self.box_pred(self.box_tower(x)).reshape(b, a, 5, h, w)
        cls = self.cls_pred(self.cls_tower(x)).reshape(b, a, self.num_classes, h, w)
        return torch.cat([box, cls], dim=2).reshape(b, a * (5 + self.num_classes), h, w)

    def darknet_layers(self) -> Iterator[ConvPair]:
        yield from chain_darknet_layers(self.box_tower, self.box_pred, self.cls_tower, self.cls_pred)


def make_head(in_channels: int, num_anchors: int, num_classes: int, decoupled: bool) -> nn.Module:
    """The plain Darknet head, or the decoupled one when ``decoupled``."""
    if decoupled:
        return DecoupledHead(in_channels, num_anchors, num_classes)
    return DetectionHead(in_channels, num_anchors, num_classes)
