"""The detectors: output layout at several input sizes, the switches, and agreement with Darknet cfgs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from yolov2.errors import ConfigError
from yolov2.models import MODELS, build_model, load_darknet_weights, save_darknet_weights
from yolov2.models.priors import COCO_ANCHORS, VOC_ANCHORS
from yolov2.models.summary import count_parameters

# Our named model <-> Darknet's cfg file and its class count.
CFG_OF_MODEL = {
    "yolov2_voc": ("yolov2-voc.cfg", 20),
    "yolov2_coco": ("yolov2.cfg", 80),
    "yolov2_tiny_voc": ("yolov2-tiny-voc.cfg", 20),
    "yolov2_tiny_coco": ("yolov2-tiny.cfg", 80),
}


@pytest.mark.parametrize("name", ["yolov2_voc", "yolov2_tiny_voc"])
@pytest.mark.parametrize("hw", [(320, 320), (416, 416), (320, 416)])
def test_output_shape_at_several_sizes(name: str, hw: tuple[int, int]) -> None:
    model = build_model(name, num_classes=3, num_anchors=4, width_multiplier=0.25).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *hw))
    assert out.shape == (1, 4 * (5 + 3), hw[0] // 32, hw[1] // 32)


@pytest.mark.parametrize("name", ["yolov2_voc", "yolov2_tiny_coco"])
@pytest.mark.parametrize("sppf,decoupled", [(True, False), (False, True), (True, True)])
def test_switches_keep_the_layout(name: str, sppf: bool, decoupled: bool) -> None:
    model = build_model(name, 2, width_multiplier=0.25, sppf=sppf, decoupled_head=decoupled).eval()
    plain = build_model(name, 2, width_multiplier=0.25)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, 5 * 7, 2, 3)
    extra = 2 * sppf + 3 * decoupled  # SPPF adds 2 convs; the decoupled head 4 instead of 1
    assert len(list(model.darknet_layers())) == len(list(plain.darknet_layers())) + extra
    assert (model.num_classes, model.num_anchors, model.stride) == (2, 5, 32)


def test_reorg_switch_changes_order_not_size() -> None:
    torch.manual_seed(0)
    a = build_model("yolov2_voc", 20, width_multiplier=0.25).eval()
    b = build_model("yolov2_voc", 20, width_multiplier=0.25, reorg="pixel_unshuffle").eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 64, 64)
    assert count_parameters(a) == count_parameters(b)
    assert not torch.allclose(a(x), b(x))


def test_default_anchors() -> None:
    assert build_model("yolov2_voc", 20, width_multiplier=0.25).default_anchors == VOC_ANCHORS
    assert build_model("yolov2_tiny_coco", 80, width_multiplier=0.25).default_anchors == COCO_ANCHORS


def test_every_named_model_is_listed() -> None:
    assert set(MODELS) == {
        "yolov2_voc", "yolov2_coco", "yolov2_tiny_voc", "yolov2_tiny_coco",
        "yolov2_resnet18", "yolov2_resnet34", "yolov2_resnet50", "yolov2_resnet101",
    }  # fmt: skip


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        ({"name": "yolov3"}, "unknown model name"),
        ({"reorg": "space_to_depth"}, "model.reorg"),
        ({"width_multiplier": 0.0}, "width_multiplier"),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_build_model_errors(kwargs: dict, fragment: str) -> None:
    args = {"name": "yolov2_tiny_voc", "num_classes": 20} | kwargs
    with pytest.raises(ConfigError, match=fragment):
        build_model(**args)


@pytest.mark.parametrize("name", list(CFG_OF_MODEL))
def test_named_model_equals_darknet_cfg_model(name: str, cfg_model, tmp_path: Path, randomize_bn) -> None:
    """Same parameter count, same conv shapes in the same order, and -- after moving the weights
    through a Darknet .weights file -- identical outputs at two input sizes."""
    cfg_name, classes = CFG_OF_MODEL[name]
    from_cfg = cfg_model(cfg_name)
    torch.manual_seed(1)
    named = build_model(name, classes).eval()
    assert count_parameters(named) == count_parameters(from_cfg)
    shapes = [tuple(c.weight.shape) + (bn is None,) for c, bn in named.darknet_layers()]
    assert shapes == [tuple(c.weight.shape) + (bn is None,) for c, bn in from_cfg.darknet_layers()]

    randomize_bn(named, 2)
    path = tmp_path / f"{name}.weights"
    save_darknet_weights(named, path)
    report = load_darknet_weights(from_cfg, path)
    assert report.layers_loaded == len(shapes)
    assert from_cfg.default_anchors == named.default_anchors
    with torch.no_grad():
        for hw in [(64, 64), (96, 64)]:
            x = torch.randn(2, 3, *hw)
            out = named(x)
            assert out.shape == (2, 5 * (5 + classes), hw[0] // 32, hw[1] // 32)
            assert torch.equal(out, from_cfg(x))


def test_torch_export_keeps_batch_and_size_dynamic() -> None:
    """The ONNX exporter traces through torch.export: the passthrough must not pin the input size."""
    from torch.export import Dim, export

    torch.manual_seed(0)
    model = build_model("yolov2_voc", 3, width_multiplier=0.25).eval()
    h, w = Dim("h", min=1, max=20), Dim("w", min=1, max=20)
    shapes = {"x": {0: Dim("batch", min=1, max=8), 2: 32 * h, 3: 32 * w}}
    program = export(model, (torch.randn(2, 3, 64, 96),), dynamic_shapes=shapes).module()
    with torch.no_grad():
        for size in [(1, 3, 128, 160), (3, 3, 320, 416)]:
            x = torch.randn(*size)
            assert torch.allclose(program(x), model(x), atol=1e-5)
