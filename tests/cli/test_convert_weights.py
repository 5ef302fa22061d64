"""`yolov2 convert-weights`: Darknet .weights -> model.pt -> .weights, byte for byte, with files written
by the test straight from the format (not by the project's writer)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from yolov2.cli import main
from yolov2.errors import ConfigError, WeightsError
from yolov2.inference import load_model_file
from yolov2.models import build_from_darknet_cfg, build_model, load_darknet_weights


def convert(*argv: str) -> None:
    assert main(["convert-weights", *argv]) == 0


def test_darknet_cfg_round_trip(darknet_cfg, cfg_facts, weights_writer, tmp_path: Path, capsys) -> None:
    """The real yolov2-tiny-voc.cfg (15.9M parameters) and voc.names."""
    cfg, names = darknet_cfg("yolov2-tiny-voc.cfg"), darknet_cfg("voc.names")
    original = weights_writer(tmp_path / "tiny.weights", cfg_facts(cfg).convs, seen=32013312)
    convert("--input", str(original), "--cfg", str(cfg), "--names", str(names), "--output", str(tmp_path / "model.pt"))
    assert "seen=32013312" in capsys.readouterr().out

    model, spec = load_model_file(tmp_path / "model.pt")
    net = build_from_darknet_cfg(cfg).eval()
    load_darknet_weights(net, original)
    assert spec.name == "yolov2_tiny_voc" and spec.num_classes == 20 and spec.input_size == 416
    assert spec.anchors == [list(a) for a in net.region["anchors"]]
    assert spec.class_names == names.read_text().split()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x), rtol=0, atol=0)

    back = tmp_path / "back" / "tiny.weights"
    convert("--input", str(tmp_path / "model.pt"), "--output", str(back), "--seen", "32013312")
    assert back.read_bytes() == original.read_bytes()
    assert (tmp_path / "back" / "tiny.names").read_text() == "".join(f"{n}\n" for n in spec.class_names)
    assert build_from_darknet_cfg(back.with_suffix(".cfg")).region == net.region


def test_named_model_round_trip(weights_writer, tmp_path: Path) -> None:
    """A narrow yolov2_voc by name (no cfg): the model's default anchors, and back byte for byte."""
    layout = [
        (c.out_channels, c.in_channels, c.kernel_size[0], bn is not None)
        for c, bn in build_model("yolov2_voc", 3, width_multiplier=0.25).darknet_layers()
    ]
    original = weights_writer(tmp_path / "narrow.weights", layout, seed=1)
    convert(
        "--input",
        str(original),
        "--model",
        "yolov2_voc",
        "--num-classes",
        "3",
        "--width-multiplier",
        "0.25",
        "--output",
        str(tmp_path / "narrow.pt"),
    )
    _, spec = load_model_file(tmp_path / "narrow.pt")
    assert spec.width_multiplier == 0.25 and spec.class_names == []
    assert spec.anchors == [list(a) for a in build_model("yolov2_voc", 3).default_anchors]
    convert("--input", str(tmp_path / "narrow.pt"), "--output", str(tmp_path / "again.weights"))
    assert (tmp_path / "again.weights").read_bytes() == original.read_bytes()
    assert not (tmp_path / "again.names").exists()
    # the cfg written on the way back describes the same network: it converts again to the same model
    convert(
        "--input",
        str(tmp_path / "again.weights"),
        "--cfg",
        str(tmp_path / "again.cfg"),
        "--width-multiplier",
        "0.25",
        "--output",
        str(tmp_path / "again.pt"),
    )
    (m1, s1), (m2, s2) = load_model_file(tmp_path / "narrow.pt"), load_model_file(tmp_path / "again.pt")
    assert s1 == s2
    for (k1, v1), (k2, v2) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


def test_refusals(darknet_cfg, cfg_facts, weights_writer, tmp_path: Path) -> None:
    cfg = darknet_cfg("yolov2-tiny-voc.cfg")
    convs = cfg_facts(cfg).convs
    small = weights_writer(tmp_path / "small.weights", convs[:-1])  # the prediction layer missing
    with pytest.raises(WeightsError, match="truncated.*expected.*actual"):
        convert("--input", str(small), "--cfg", str(cfg), "--output", str(tmp_path / "x.pt"))
    with pytest.raises(ConfigError, match="--num-classes"):
        convert("--input", str(small), "--model", "yolov2_tiny_voc", "--output", str(tmp_path / "x.pt"))
    names = tmp_path / "two.names"
    names.write_text("a\nb\n")
    full = weights_writer(tmp_path / "full.weights", convs)
    with pytest.raises(ConfigError, match="2 class names for 20 classes"):
        convert("--input", str(full), "--cfg", str(cfg), "--names", str(names), "--output", str(tmp_path / "x.pt"))
    headless = tmp_path / "headless.cfg"
    headless.write_text(cfg.read_text().split("[region]")[0])
    with pytest.raises(ConfigError, match="no \\[region\\]"):
        convert("--input", str(full), "--cfg", str(headless), "--output", str(tmp_path / "x.pt"))
    with pytest.raises(ConfigError, match="match none"):  # tiny's layers are not yolov2_voc's
        convert("--input", str(full), "--cfg", str(cfg), "--model", "yolov2_voc", "--output", str(tmp_path / "x.pt"))
    assert not (tmp_path / "x.pt").exists()
