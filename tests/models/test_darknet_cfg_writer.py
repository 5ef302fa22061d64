"""darknet_cfg_text against Darknet's own cfg files, and against the PyTorch models it describes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from yolov2.errors import ConfigError
from yolov2.models import build_from_darknet_cfg, build_model
from yolov2.models.darknet_cfg import parse_cfg, region_options
from yolov2.models.darknet_cfg_writer import darknet_cfg_text

# (our model name, Darknet's cfg file, classes in it)
DARKNET_FILES = [
    ("yolov2_voc", "yolov2-voc.cfg", 20),
    ("yolov2_coco", "yolov2.cfg", 80),
    ("yolov2_tiny_voc", "yolov2-tiny-voc.cfg", 20),
]

LAYER_KEYS = {  # the options that define each layer (Darknet's defaults filled in where a file omits them)
    "convolutional": {
        "batch_normalize": "0", "filters": "1", "size": "1", "stride": "1", "pad": "0", "activation": "logistic",
    },
    "maxpool": {"size": "1", "stride": "1"},
    "route": {"layers": None},
    "reorg": {"stride": "1"},
}  # fmt: skip


def layer_signature(path: Path) -> list[tuple[str, dict[str, float | str]]]:
    """Each layer section of a cfg as (name, options with Darknet's defaults, numbers as floats)."""
    out = []
    for section in parse_cfg(path)[1:]:
        if section.name == "region":
            continue
        opts: dict[str, float | str] = {}
        for key, default in LAYER_KEYS[section.name].items():
            value = section.options.get(key, default)
            try:
                opts[key] = float(value)
            except (TypeError, ValueError):
                opts[key] = value
        out.append((section.name, opts))
    return out


def write(tmp_path: Path, text: str, name: str = "model.cfg") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name,cfg_file,classes", DARKNET_FILES)
def test_cfg_matches_darknet_file(name: str, cfg_file: str, classes: int, cfg_dir: Path, tmp_path: Path) -> None:
    darknet = cfg_dir / cfg_file
    darknet_sections = parse_cfg(darknet)
    darknet_region = region_options(darknet_sections[-1])
    net = darknet_sections[0].options
    size = int(net["width"])
    ours = write(tmp_path, darknet_cfg_text(name, classes, darknet_region["anchors"], 1.0, size))
    assert layer_signature(ours) == layer_signature(darknet)
    our_sections = parse_cfg(ours)
    assert region_options(our_sections[-1]) == darknet_region
    for key in ("jitter", "bias_match", "absolute", "random"):
        assert float(our_sections[-1].options[key]) == float(darknet_sections[-1].options[key]), key
    for key in ("width", "height", "channels"):
        assert int(our_sections[0].options[key]) == int(net[key])


@pytest.mark.parametrize("name", ["yolov2_voc", "yolov2_tiny_voc", "yolov2_tiny_coco"])
def test_cfg_network_computes_the_model(name: str, tmp_path: Path, randomize_bn) -> None:
    """A narrow model with 3 classes and 4 anchors: the network built from its cfg, given the model's
    weights tensor by tensor in cfg order, gives the model's output."""
    torch.manual_seed(0)
    model = build_model(name, 3, num_anchors=4, width_multiplier=0.25).eval()
    randomize_bn(model, 1)
    anchors = [(1.0, 2.0), (2.5, 1.5), (4.0, 4.0), (6.0, 3.0)]
    net = build_from_darknet_cfg(write(tmp_path, darknet_cfg_text(name, 3, anchors, 0.25, 64))).eval()
    assert net.region["anchors"] == anchors and net.region["classes"] == 3 and net.input_size == (64, 64)
    pairs_model, pairs_net = list(model.darknet_layers()), list(net.darknet_layers())
    assert len(pairs_model) == len(pairs_net)
    with torch.no_grad():
        for (conv_m, bn_m), (conv_n, bn_n) in zip(pairs_model, pairs_net):
            conv_n.weight.copy_(conv_m.weight)
            if bn_m is None:
                assert bn_n is None
                conv_n.bias.copy_(conv_m.bias)
            else:
                bn_n.load_state_dict(bn_m.state_dict())
        x = torch.rand(2, 3, 64, 96)
        torch.testing.assert_close(net(x), model(x), rtol=0, atol=1e-6)


def test_refuses_models_darknet_cannot_run() -> None:
    with pytest.raises(ConfigError, match="yolov2_resnet18"):
        darknet_cfg_text("yolov2_resnet18", 20, [(1.0, 1.0)])
    with pytest.raises(ConfigError, match="multiple of 32"):
        darknet_cfg_text("yolov2_voc", 20, [(1.0, 1.0)], input_size=400)
