"""ResNet-18/34/50/101 backbones (torchvision, randomly initialised: no download) for the YOLOv2 head.

The passthrough is taken from the stride-16 stage (``layer3``) and the head sits on ``layer4``
(stride 32), mirroring Darknet-19's 26x26 / 13x13 pair at 416.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torchvision
from torch import nn

from yolov2.models.layers import ConvPair

# depth -> (torchvision constructor, layer3 channels, layer4 channels)
RESNETS = {
    18: (torchvision.models.resnet18, 256, 512),
    34: (torchvision.models.resnet34, 256, 512),
    50: (torchvision.models.resnet50, 1024, 2048),
    101: (torchvision.models.resnet101, 1024, 2048),
}


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its pooling and classifier.

    x (Tensor[B, 3, H, W]), H and W divisible by 32 ->
    (Tensor[B, passthrough_channels, H/16, W/16] from layer3, Tensor[B, out_channels, H/32, W/32] from layer4).
    """

    def __init__(self, depth: int) -> None:
        super().__init__()
        if depth not in RESNETS:
            raise ValueError(f"unsupported ResNet depth {depth}; choose one of {sorted(RESNETS)}")
        make, self.passthrough_channels, self.out_channels = RESNETS[depth]
        net = make(weights=None)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p16 = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return p16, self.layer4(p16)

    def darknet_layers(self) -> Iterator[ConvPair]:
        """Each conv with the batch norm that follows it, in module order (downsample pairs included),
        so a ResNet detector also round-trips through the Darknet ``.weights`` layout."""
        convs = [m for m in self.modules() if isinstance(m, nn.Conv2d)]
        bns = [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
        # torchvision registers every BatchNorm right after its conv (conv1/bn1, ..., downsample[0]/[1]).
        if len(convs) != len(bns):
            raise RuntimeError(f"expected one BatchNorm per conv, got {len(convs)} convs and {len(bns)} norms")
        for conv, bn in zip(convs, bns):
            if bn.num_features != conv.out_channels:
                raise RuntimeError(f"conv/bn pairing broke: {conv} followed by {bn}")
            yield conv, bn
