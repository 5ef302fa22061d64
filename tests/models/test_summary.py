"""model_summary: parameters, output shape, and Darknet-convention GFLOPs (2 x conv MACs)."""

from __future__ import annotations

import pytest
from torch import nn

from yolov2.models import build_model, model_summary


def test_summary_of_a_hand_sized_net() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8*3*9 MACs per output pixel, 32x48 outputs
        nn.MaxPool2d(2),
        nn.Conv2d(8, 4, 1, groups=2),  # 4*(8/2)*1 MACs per output pixel, 16x24 outputs
        nn.Flatten(),
    )
    s = model_summary(net, (32, 48))
    macs = 8 * 3 * 9 * 32 * 48 + 4 * 4 * 16 * 24
    assert s["conv_macs"] == macs
    assert s["gflops"] == pytest.approx(2 * macs / 1e9)
    assert s["params"] == (8 * 27 + 8) + (4 * 4 + 4)
    assert s["output_shape"] == [1, 4 * 16 * 24]
    assert s["input_shape"] == [1, 3, 32, 48]


def test_summary_restores_training_mode_and_matches_darknet_tiny_figure() -> None:
    model = build_model("yolov2_tiny_voc", 20)
    model.train()
    s = model_summary(model, 416)
    assert model.training
    assert s["output_shape"] == [1, 125, 13, 13]
    # Darknet's site lists tiny YOLO (VOC) at 416 as 6.97 Bn FLOPs, which is 2 x conv MACs.
    assert round(s["gflops"], 2) == 6.97
