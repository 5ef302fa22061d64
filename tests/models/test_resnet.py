"""ResNet backbones: passthrough from layer3 (stride 16), head on layer4 (stride 32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from yolov2.errors import ConfigError
from yolov2.models import build_model, load_darknet_weights, save_darknet_weights
from yolov2.models.resnet import ResNetBackbone

# depth -> (layer3 channels, layer4 channels), from the ResNet paper's table 1 (x4 expansion for 50/101).
CHANNELS = {18: (256, 512), 34: (256, 512), 50: (1024, 2048), 101: (1024, 2048)}


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_backbone_strides_and_channels(depth: int) -> None:
    backbone = ResNetBackbone(depth).eval()
    with torch.no_grad():
        p16, p32 = backbone(torch.randn(1, 3, 64, 96))
    c16, c32 = CHANNELS[depth]
    assert p16.shape == (1, c16, 4, 6) and p32.shape == (1, c32, 2, 3)
    assert (backbone.passthrough_channels, backbone.out_channels) == (c16, c32)
    # every conv paired with its own batch norm, all convs covered
    pairs = list(backbone.darknet_layers())
    assert len(pairs) == sum(isinstance(m, nn.Conv2d) for m in backbone.modules())
    assert all(bn.num_features == conv.out_channels for conv, bn in pairs)


def test_detector_output_shape_and_weights_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("yolov2_resnet18", num_classes=3, num_anchors=2).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, 2 * 8, 2, 3)
    assert model.passthrough.conv.in_channels == 256 and model.head1.conv.in_channels == 512
    path = tmp_path / "r18.weights"
    save_darknet_weights(model, path)
    torch.manual_seed(1)
    other = build_model("yolov2_resnet18", num_classes=3, num_anchors=2).eval()
    load_darknet_weights(other, path)
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(a, b), k


def test_resnet_refuses_width_multiplier() -> None:
    with pytest.raises(ConfigError, match="torchvision's widths"):
        build_model("yolov2_resnet18", 20, width_multiplier=0.5)
