"""Darknet building blocks against direct loop ports of Darknet's C (src/blas.c, src/maxpool_layer.c)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from yolov2.models.layers import (
    SPPF,
    DarknetConv,
    DarknetMaxPool,
    Reorg,
    darknet_reorg,
    scaled_channels,
    set_batch_norm_formula,
)


def reorg_cpu_loop(x: list[float], w: int, h: int, c: int, batch: int, stride: int, forward: int) -> list[float]:
    """Line-by-line port of Darknet's reorg_cpu (src/blas.c) on flat buffers."""
    out = [0.0] * len(x)
    out_c = c // (stride * stride)
    for b in range(batch):
        for k in range(c):
            for j in range(h):
                for i in range(w):
                    in_index = i + w * (j + h * (k + c * b))
                    c2 = k % out_c
                    offset = k // out_c
                    w2 = i * stride + offset % stride
                    h2 = j * stride + offset // stride
                    out_index = w2 + w * stride * (h2 + h * stride * (c2 + out_c * b))
                    if forward:
                        out[out_index] = x[in_index]
                    else:
                        out[in_index] = x[out_index]
    return out


@pytest.mark.parametrize("b,c,h,w", [(2, 8, 4, 4), (1, 16, 4, 6), (2, 4, 6, 2)])
def test_darknet_reorg_matches_reorg_cpu_loop(b: int, c: int, h: int, w: int) -> None:
    x = torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(1))
    expected_flat = reorg_cpu_loop(x.flatten().tolist(), w, h, c, b, 2, forward=0)
    expected = torch.tensor(expected_flat, dtype=x.dtype).reshape(b, c * 4, h // 2, w // 2)
    got = darknet_reorg(x, 2)
    assert got.shape == (b, c * 4, h // 2, w // 2)
    assert torch.equal(got, expected)
    assert torch.equal(Reorg(2, "darknet")(x), expected)


def test_darknet_reorg_is_not_pixel_unshuffle() -> None:
    x = torch.arange(2 * 8 * 4 * 4, dtype=torch.float32).reshape(2, 8, 4, 4)
    assert not torch.equal(darknet_reorg(x), F.pixel_unshuffle(x, 2))


def test_pixel_unshuffle_reorg_is_space_to_depth() -> None:
    b, c, h, w, s = 2, 3, 4, 6, 2
    x = torch.randn(b, c, h, w)
    got = Reorg(s, "pixel_unshuffle")(x)
    assert got.shape == (b, c * s * s, h // s, w // s)
    for bi in range(b):
        for ci in range(c):
            for dy in range(s):
                for dx in range(s):
                    for j in range(h // s):
                        for i in range(w // s):
                            assert got[bi, ci * s * s + dy * s + dx, j, i] == x[bi, ci, j * s + dy, i * s + dx]


def test_reorg_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="reorg mode"):
        Reorg(2, "space_to_depth")  # type: ignore[arg-type]


def maxpool_loop(x: torch.Tensor, size: int, stride: int, pad: int) -> torch.Tensor:
    """Port of Darknet's forward_maxpool_layer (src/maxpool_layer.c) and its output size."""
    b, c, h, w = x.shape
    out_h = (h + pad - size) // stride + 1
    out_w = (w + pad - size) // stride + 1
    w_offset = h_offset = -(pad // 2)  # C's -l.pad/2 truncates toward zero; pad >= 0 here
    out = torch.empty(b, c, out_h, out_w)
    for bi in range(b):
        for k in range(c):
            for i in range(out_h):
                for j in range(out_w):
                    best = -3.4028234663852886e38  # -FLT_MAX
                    for n in range(size):
                        for m in range(size):
                            cur_h = h_offset + i * stride + n
                            cur_w = w_offset + j * stride + m
                            valid = 0 <= cur_h < h and 0 <= cur_w < w
                            val = float(x[bi, k, cur_h, cur_w]) if valid else -3.4028234663852886e38
                            best = max(best, val)
                    out[bi, k, i, j] = best
    return out


@pytest.mark.parametrize(
    "size,stride,h,w",
    [(2, 2, 4, 4), (2, 2, 5, 3), (2, 1, 3, 3), (2, 1, 4, 5), (3, 1, 4, 4), (3, 2, 5, 6)],
)
def test_maxpool_matches_darknet_loop(size: int, stride: int, h: int, w: int) -> None:
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(size * 10 + stride))
    expected = maxpool_loop(x, size, stride, pad=size - 1)
    got = DarknetMaxPool(size, stride)(x)
    assert got.shape == expected.shape
    assert torch.equal(got, expected)


def test_tiny_maxpool_keeps_13x13() -> None:
    assert DarknetMaxPool(2, 1)(torch.randn(1, 2, 13, 13)).shape == (1, 2, 13, 13)


def _conv_bn_with_small_variances(formula: str = "darknet") -> DarknetConv:
    torch.manual_seed(0)
    block = DarknetConv(4, 6, 3, bn_formula=formula).eval()
    with torch.no_grad():
        block.bn.running_mean.uniform_(-0.5, 0.5)
        block.bn.running_var.uniform_(1e-5, 1e-4)  # small variances: the epsilon and its place matter
        block.bn.weight.uniform_(0.5, 1.5)
        block.bn.bias.uniform_(-0.5, 0.5)
    return block


def _darknet_conv_bn_leaky(block: DarknetConv, x: torch.Tensor, denominator) -> torch.Tensor:
    y = F.conv2d(x, block.conv.weight, padding=1)
    mean, var = block.bn.running_mean[:, None, None], block.bn.running_var[:, None, None]
    y = (y - mean) / denominator(var) * block.bn.weight[:, None, None] + block.bn.bias[:, None, None]
    return torch.where(y > 0, y, 0.1 * y)  # scale_bias, add_bias, then leaky 0.1


# pjreddie's normalize_cpu (src/blas.c): x = (x - mean[f]) / (sqrt(variance[f]) + .000001f)
def _pjreddie(var: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(var) + 0.000001


# AlexeyAB's fork: x = (x - mean[f]) / sqrt(variance[f] + .00001f)
def _alexeyab(var: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(var + 0.00001)


def test_conv_bn_leaky_follows_darknet_formula() -> None:
    block = _conv_bn_with_small_variances()
    assert block.conv.bias is None  # the BN shift is Darknet's bias
    assert block.conv.padding == (1, 1)
    x = torch.randn(2, 4, 5, 7)
    torch.testing.assert_close(block(x), _darknet_conv_bn_leaky(block, x, _pjreddie), rtol=1e-5, atol=1e-5)
    # PyTorch's own sqrt(var + 1e-6) is measurably another function on these variances
    torch_formula = _darknet_conv_bn_leaky(block, x, lambda var: torch.sqrt(var + 0.000001))
    assert (block(x) - torch_formula).abs().max() > 1e-2


def test_conv_bn_alexeyab_formula() -> None:
    block = _conv_bn_with_small_variances("alexeyab")
    x = torch.randn(2, 4, 5, 7)
    torch.testing.assert_close(block(x), _darknet_conv_bn_leaky(block, x, _alexeyab), rtol=1e-5, atol=1e-5)
    set_batch_norm_formula(block, "darknet")
    torch.testing.assert_close(block(x), _darknet_conv_bn_leaky(block, x, _pjreddie), rtol=1e-5, atol=1e-5)


def test_batch_norm_trains_on_batch_statistics() -> None:
    block = _conv_bn_with_small_variances().train()
    x = torch.randn(4, 4, 5, 7)
    y = F.conv2d(x, block.conv.weight, padding=1)
    mean, var = y.mean((0, 2, 3), keepdim=True), y.var((0, 2, 3), unbiased=False, keepdim=True)
    y = (y - mean) / torch.sqrt(var + 1e-6) * block.bn.weight[:, None, None] + block.bn.bias[:, None, None]
    torch.testing.assert_close(block(x), torch.where(y > 0, y, 0.1 * y), rtol=1e-4, atol=1e-4)


def test_unknown_batch_norm_formula_is_refused() -> None:
    with pytest.raises(ValueError, match="alexeyab"):
        DarknetConv(4, 6, 3, bn_formula="torch")


def test_linear_conv_has_bias_and_no_bn() -> None:
    block = DarknetConv(8, 125, 1, batch_normalize=False, activation="linear")
    assert block.bn is None and block.conv.bias is not None
    x = torch.randn(1, 8, 3, 3)
    assert torch.allclose(block(x), F.conv2d(x, block.conv.weight, block.conv.bias))


def test_sppf_keeps_shape_and_counts_two_convs() -> None:
    m = SPPF(32, 32)
    assert m(torch.randn(1, 32, 4, 4)).shape == (1, 32, 4, 4)
    assert [c.out_channels for c, _ in m.darknet_layers()] == [16, 32]


def test_scaled_channels() -> None:
    assert scaled_channels(1024, 1.0) == 1024
    assert scaled_channels(1024, 0.25) == 256
    assert scaled_channels(32, 0.25) == 8
    assert scaled_channels(64, 0.1) == 8  # never below the divisor
    for c in (32, 64, 128, 1024):
        assert scaled_channels(c, 0.3) % 8 == 0
        assert math.isclose(scaled_channels(c, 0.5), c * 0.5)
