"""Darknet .weights reading and writing: sizes, byte layout, round trips, partial loads, refusals.

Narrow models (width_multiplier=0.25) keep this fast; the layout does not depend on the widths.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from yolov2.errors import WeightsError
from yolov2.models import build_model, load_darknet_weights, save_darknet_weights


def state_values(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def small_voc(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("yolov2_voc", 20, width_multiplier=0.25).eval()


@pytest.fixture
def saved(tmp_path: Path, randomize_bn) -> tuple[nn.Module, Path]:
    model = small_voc(1)
    randomize_bn(model, 1)
    path = tmp_path / "model.weights"
    save_darknet_weights(model, path, seen=123456789012)
    return model, path


def test_file_size_is_header_plus_all_state(saved) -> None:
    model, path = saved
    n_values = sum(t.numel() for t in state_values(model).values())  # params + BN running stats
    assert path.stat().st_size == 20 + 4 * n_values


def test_header_and_byte_layout(saved) -> None:
    model, path = saved
    data = path.read_bytes()
    assert struct.unpack_from("<3iq", data, 0) == (0, 2, 0, 123456789012)
    values = np.frombuffer(data, "<f4", offset=20)
    first = model.backbone.stage16[0]  # conv 3x3/8 with batch norm
    n, k = first.conv.out_channels, first.conv.weight.numel()
    expect = [first.bn.bias, first.bn.weight, first.bn.running_mean, first.bn.running_var, first.conv.weight]
    np.testing.assert_array_equal(values[: 4 * n + k], torch.cat([t.detach().flatten() for t in expect]).numpy())
    last = model.pred.pred.conv  # 1x1 linear prediction conv: bias then weights, last in the file
    tail = values[-(last.out_channels + last.weight.numel()) :]
    np.testing.assert_array_equal(tail, torch.cat([last.bias.detach(), last.weight.detach().flatten()]).numpy())


def test_round_trip_is_bit_exact(saved) -> None:
    model, path = saved
    other = small_voc(2)
    report = load_darknet_weights(other, path)
    expected = state_values(model)
    got = state_values(other)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert report.layers_loaded == report.layers_total == 23
    assert report.seen == 123456789012 and report.version == (0, 2, 0)
    assert report.bytes_used == report.file_bytes == path.stat().st_size
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(model(x), other(x))


def _truncate_or_extend(path: Path, delta: int) -> int:
    data = path.read_bytes()
    path.write_bytes(data[:delta] if delta < 0 else data + b"\0" * delta)
    return len(data)


@pytest.mark.parametrize("delta,word", [(-4, "truncated"), (-1000, "truncated"), (8, "oversized")])
def test_wrong_size_is_refused_with_both_sizes(saved, delta: int, word: str) -> None:
    _, path = saved
    expected = _truncate_or_extend(path, delta)
    fresh = small_voc(3)
    before = state_values(fresh)
    with pytest.raises(WeightsError) as e:
        load_darknet_weights(fresh, path)
    msg = str(e.value)
    assert word in msg and f"{expected:,}" in msg and f"{expected + delta:,}" in msg and str(path) in msg
    assert all(torch.equal(before[k], v) for k, v in state_values(fresh).items())  # untouched


def test_partial_file_like_darknet19_conv23(tmp_path: Path, randomize_bn) -> None:
    """darknet19_448.conv.23 holds Darknet layers 0..22 = the 18 conv layers of Darknet-19."""
    source = small_voc(4)
    randomize_bn(source, 4)
    path = tmp_path / "darknet19.conv.23"
    written = save_darknet_weights(source, path, max_layers=18)
    backbone_values = sum(t.numel() for t in state_values(source.backbone).values())
    assert written == path.stat().st_size == 20 + 4 * backbone_values

    with pytest.raises(WeightsError, match="truncated"):
        load_darknet_weights(small_voc(5), path)

    for kwargs in ({"max_layers": 18}, {"allow_partial": True}):
        target = small_voc(5)
        head_before = state_values(target.pred)
        report = load_darknet_weights(target, path, **kwargs)
        assert (report.layers_loaded, report.layers_total) == (18, 23)
        src, dst = state_values(source.backbone), state_values(target.backbone)
        assert all(torch.equal(src[k], dst[k]) for k in src)
        assert all(torch.equal(v, state_values(target.pred)[k]) for k, v in head_before.items())

    with pytest.raises(WeightsError, match="first 19 conv layers need"):
        load_darknet_weights(small_voc(5), path, max_layers=19)


def test_first_layers_of_a_full_file(saved) -> None:
    model, path = saved
    target = small_voc(6)
    report = load_darknet_weights(target, path, max_layers=2)
    assert report.layers_loaded == 2 and report.bytes_used < report.file_bytes
    first = model.backbone.stage16[0]
    assert torch.equal(target.backbone.stage16[0].conv.weight, first.conv.weight)
    assert torch.equal(target.backbone.stage16[2].bn.running_var, model.backbone.stage16[2].bn.running_var)
    assert not torch.equal(target.backbone.stage16[4].conv.weight, model.backbone.stage16[4].conv.weight)


def test_partial_file_ending_inside_a_layer_is_refused(saved) -> None:
    _, path = saved
    _truncate_or_extend(path, -12)
    with pytest.raises(WeightsError, match="ends inside conv layer 22"):
        load_darknet_weights(small_voc(7), path, allow_partial=True)


def test_old_header_with_int32_seen(saved, tmp_path: Path) -> None:
    model, path = saved
    old = tmp_path / "old.weights"
    old.write_bytes(struct.pack("<3ii", 0, 1, 0, 4242) + path.read_bytes()[20:])  # version 0.1: 16-byte header
    target = small_voc(8)
    report = load_darknet_weights(target, old)
    assert report.seen == 4242 and report.version == (0, 1, 0) and report.bytes_used == old.stat().st_size
    assert torch.equal(target.pred.pred.conv.weight, model.pred.pred.conv.weight)


def test_save_is_atomic_and_leaves_no_temp_files(saved) -> None:
    model, path = saved
    save_darknet_weights(model, path)  # overwrite in place
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_model_without_darknet_layers_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="darknet_layers"):
        save_darknet_weights(nn.Conv2d(3, 3, 1), tmp_path / "x.weights")
