"""Prediction heads: both give Darknet's anchor-major layout."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from yolov2.models.heads import DecoupledHead, DetectionHead, make_head


def test_plain_head_is_one_linear_1x1_conv() -> None:
    head = DetectionHead(16, 5, 20)
    pairs = list(head.darknet_layers())
    assert len(pairs) == 1
    conv, bn = pairs[0]
    assert bn is None and conv.out_channels == 125 and conv.kernel_size == (1, 1)
    x = torch.randn(2, 16, 3, 4)
    assert torch.allclose(head(x), F.conv2d(x, conv.weight, conv.bias))


def test_decoupled_head_interleaves_per_anchor() -> None:
    torch.manual_seed(0)
    a, c = 3, 4
    head = DecoupledHead(16, a, c).eval()
    x = torch.randn(2, 16, 3, 5)
    out = head(x)
    assert out.shape == (2, a * (5 + c), 3, 5)
    box = head.box_pred(head.box_tower(x))  # (B, A*5, H, W): anchor a's 5 values at a*5 .. a*5+4
    cls = head.cls_pred(head.cls_tower(x))  # (B, A*C, H, W)
    for k in range(a):
        block = out[:, k * (5 + c) : (k + 1) * (5 + c)]
        assert torch.equal(block[:, :5], box[:, k * 5 : (k + 1) * 5])
        assert torch.equal(block[:, 5:], cls[:, k * c : (k + 1) * c])
    assert len(list(head.darknet_layers())) == 4


def test_make_head_switch() -> None:
    assert isinstance(make_head(8, 5, 2, decoupled=False), DetectionHead)
    assert isinstance(make_head(8, 5, 2, decoupled=True), DecoupledHead)
