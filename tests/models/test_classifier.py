"""The pretrain classifier and its hand-over to the detector, checked against Darknet's cfg files.

The expected layer list, parameter count and partial-file size come from a separate walk over the text of
``darknet19.cfg`` / ``yolov2-tiny-voc.cfg`` (filters, size, batch_normalize, channels through maxpools), not
from the code under test. Narrow models (width_multiplier=0.25) keep the hand-over tests fast; the full-width
Darknet-19 is built where its real sizes are the point.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from torch import nn

from cfg_text import cfg_sections
from yolov2.engine.init import load_initial_weights
from yolov2.errors import ConfigError, WeightsError
from yolov2.models import (
    MODELS,
    BackboneClassifier,
    build_classifier,
    build_model,
    load_backbone_state,
    load_darknet_weights,
    save_backbone_state,
    save_backbone_weights,
)
from yolov2.models.summary import count_parameters
from yolov2.models.tiny import TinyBackbone

DARKNET19_CONV23_BYTES = 79_327_120  # pjreddie.com/media/files/darknet19_448.conv.23, as published


def cfg_convs(path: Path) -> list[dict[str, int]]:
    """Independent walk over a cfg's text: each [convolutional] as filters, c_in, size, bn (in file order)."""
    sections = cfg_sections(path)
    c = int(sections[0][1].get("channels", 3))
    convs = []
    for kind, opt in sections[1:]:
        if kind == "convolutional":
            n = int(opt["filters"])
            convs.append({"filters": n, "c_in": c, "size": int(opt["size"]), "bn": int(opt.get("batch_normalize", 0))})
            c = n
        elif kind == "region":
            break
        elif kind not in ("maxpool", "avgpool", "softmax", "cost"):  # none of these changes the channels
            raise AssertionError(f"reference walk does not handle [{kind}]")
    return convs


def params_of(convs: list[dict[str, int]]) -> int:
    """Learnable parameters: weights + BN scale and shift, or the conv bias."""
    return sum(c["filters"] * c["c_in"] * c["size"] ** 2 + c["filters"] * (2 if c["bn"] else 1) for c in convs)


def floats_of(convs: list[dict[str, int]]) -> int:
    """float32 values in a Darknet weights file: weights + biases (+ scales, rolling mean and variance)."""
    return sum(c["filters"] * c["c_in"] * c["size"] ** 2 + c["filters"] * (4 if c["bn"] else 1) for c in convs)


def shapes_of(convs: list[dict[str, int]]) -> list[tuple[tuple[int, ...], bool]]:
    return [((c["filters"], c["c_in"], c["size"], c["size"]), bool(c["bn"])) for c in convs]


def model_shapes(model: nn.Module) -> list[tuple[tuple[int, ...], bool]]:
    return [(tuple(conv.weight.shape), bn is not None) for conv, bn in model.darknet_layers()]


def state_values(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def layer_tensors(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> list[torch.Tensor]:
    if bn is None:
        return [conv.weight, conv.bias]
    return [conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var]


def classifier_cfg(cfg_dir: Path, name: str) -> Path:
    path = cfg_dir / name
    if not path.is_file():
        pytest.skip(f"{name} not found in {cfg_dir}")
    return path


@pytest.fixture(scope="module")
def darknet19(randomize_bn) -> BackboneClassifier:
    """The full-width Darknet-19 classifier (1000 classes), with non-trivial batch-norm statistics."""
    torch.manual_seed(0)
    model = build_classifier("yolov2_voc", 1000).eval()
    randomize_bn(model, 0)
    return model


@pytest.fixture(scope="module")
def darknet19_partial(darknet19: BackboneClassifier, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("partial") / "darknet19_448.conv.23.weights"
    save_backbone_weights(darknet19, path)
    return path


# ---- the network: ours against Darknet's cfg -------------------------------------------------------------


@pytest.mark.parametrize("cfg", ["darknet19.cfg", "darknet19_448.cfg"])
def test_darknet19_classifier_is_the_cfg_network(cfg: str, cfg_dir: Path, cfg_model, darknet19) -> None:
    ref = cfg_convs(classifier_cfg(cfg_dir, cfg))
    assert len(ref) == 19 and ref[-1] == {"filters": 1000, "c_in": 1024, "size": 1, "bn": 0}
    from_cfg = cfg_model(cfg)
    assert count_parameters(darknet19) == count_parameters(from_cfg) == params_of(ref) == 20_842_376
    assert model_shapes(darknet19) == model_shapes(from_cfg) == shapes_of(ref)
    assert darknet19.num_backbone_layers == 18


def test_cfg_network_outputs_the_softmax_of_our_logits(cfg_dir: Path, cfg_model, darknet19) -> None:
    """Same tensors in both (copied layer by layer in cfg order): the cfg's [avgpool] + [softmax] end gives our
    logits' softmax, and our head is the cfg's last conv (bias, linear) followed by the average."""
    from_cfg = cfg_model(classifier_cfg(cfg_dir, "darknet19.cfg").name)
    with torch.no_grad():
        for (c1, b1), (c2, b2) in zip(darknet19.darknet_layers(), from_cfg.darknet_layers(), strict=True):
            for src, dst in zip(layer_tensors(c1, b1), layer_tensors(c2, b2), strict=True):
                dst.copy_(src)
        x = torch.randn(2, 3, 64, 64)
        probs = from_cfg(x)
        logits = darknet19(x)
    assert probs.shape == (2, 1000, 1, 1) and logits.shape == (2, 1000)
    torch.testing.assert_close(probs.flatten(1), torch.softmax(logits, dim=1), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(darknet19.predict_proba(x), probs.flatten(1), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["yolov2_voc", "yolov2_tiny_coco", "yolov2_resnet18"])
@pytest.mark.parametrize("side", [224, 448])
def test_forward_gives_logits_per_class(name: str, side: int) -> None:
    width = 1.0 if "resnet" in name else 0.25
    model = build_classifier(name, 7, width_multiplier=width).eval()
    batch = 2 if side == 224 else 1
    with torch.no_grad():
        out = model(torch.randn(batch, 3, side, side))
    assert out.shape == (batch, 7)
    assert not torch.allclose(out.sum(dim=1), torch.ones(batch))  # logits, not probabilities


@pytest.mark.parametrize("name", list(MODELS))
def test_backbone_is_the_detectors(name: str) -> None:
    """Same class, same tensor names and shapes as the detector's backbone, for every detector family."""
    width = 1.0 if "resnet" in name else 0.5
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        classifier = build_classifier(name, 10, width_multiplier=width)
        detector = build_model(name, 20, width_multiplier=width)
    assert type(classifier.backbone) is type(detector.backbone)
    expected = {k: v.shape for k, v in detector.backbone.state_dict().items()}
    assert {k: v.shape for k, v in classifier.backbone.state_dict().items()} == expected
    # the detector's Darknet layer list starts with its backbone's, so a partial file fills exactly the backbone
    n = classifier.num_backbone_layers
    assert model_shapes(detector)[:n] == model_shapes(classifier)[:n]
    assert model_shapes(classifier)[n:] == [((10, classifier.backbone.out_channels, 1, 1), False)]


def test_tiny_detector_keeps_its_state_dict_keys() -> None:
    """The tiny body became a TinyBackbone (an nn.Sequential): its tensors keep the names Darknet weight
    loading and saved model files use."""
    with torch.device("meta"):
        detector = build_model("yolov2_tiny_voc", 20)
    assert isinstance(detector.body, TinyBackbone) and detector.backbone is detector.body
    keys = [k for k in detector.state_dict() if k.endswith("conv.weight")]
    assert keys == [f"body.{i}.conv.weight" for i in range(0, 13, 2)] + ["head1.conv.weight", "pred.pred.conv.weight"]


def test_unknown_detector_name_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as e:
        build_classifier("darknet53", 1000)
    assert "darknet53" in str(e.value) and all(name in str(e.value) for name in MODELS)


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        ({"detector_name": "yolov2_resnet50", "num_classes": 10, "width_multiplier": 0.5}, "torchvision's widths"),
        ({"detector_name": "yolov2_voc", "num_classes": 0}, "num_classes"),
        ({"detector_name": "yolov2_voc", "num_classes": 10, "width_multiplier": 0.0}, "width_multiplier"),
        ({"detector_name": "yolov2_voc", "num_classes": 10, "batch_norm": "torch"}, "batch_norm"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        build_classifier(**kwargs)


# ---- the Darknet partial weights file ---------------------------------------------------------------------


def test_partial_file_size_is_what_darknet_expects(cfg_dir: Path, darknet19_partial: Path) -> None:
    backbone = cfg_convs(classifier_cfg(cfg_dir, "darknet19_448.cfg"))[:18]
    values = floats_of(backbone)
    assert values == 19_831_776
    assert darknet19_partial.stat().st_size == 20 + 4 * values  # version 0.2 header: 3 x int32 + int64 seen
    data = darknet19_partial.read_bytes()[:20]
    assert struct.unpack("<3iq", data) == (0, 2, 0, 0)  # seen=0, as Darknet's `partial` writes it
    # The published darknet19_448.conv.23 holds the same values after an older 16-byte header (int32 seen).
    assert 16 + 4 * values == DARKNET19_CONV23_BYTES


def test_partial_file_reads_into_darknet19_448_cfg(cfg_dir: Path, cfg_model, darknet19, darknet19_partial) -> None:
    """Darknet's own layer list (darknet19_448.cfg) reads the file as its layers 0..22; a full load is refused."""
    from_cfg = cfg_model(classifier_cfg(cfg_dir, "darknet19_448.cfg").name)
    with pytest.raises(WeightsError, match="truncated"):
        load_darknet_weights(from_cfg, darknet19_partial)
    report = load_darknet_weights(from_cfg, darknet19_partial, max_layers=18)
    assert (report.layers_loaded, report.bytes_used) == (18, darknet19_partial.stat().st_size)
    pairs = zip(list(darknet19.darknet_layers())[:18], list(from_cfg.darknet_layers())[:18], strict=True)
    for (c1, b1), (c2, b2) in pairs:
        for a, b in zip(layer_tensors(c1, b1), layer_tensors(c2, b2), strict=True):
            assert torch.equal(a, b)


def test_partial_file_starts_the_detector(darknet19, darknet19_partial: Path) -> None:
    """load_initial_weights(detector, file, layers=18): the backbone's 18 convs and batch norms come from the
    classifier, every other detector tensor is as it was."""
    torch.manual_seed(1)
    detector = build_model("yolov2_voc", 20).eval()
    before = state_values(detector)
    load_initial_weights(detector, str(darknet19_partial), layers=18)
    got = state_values(detector)
    source = {f"backbone.{k}": v for k, v in state_values(darknet19.backbone).items()}
    assert len(source) == 18 * 5  # conv weight, BN weight, bias, running mean and variance per layer
    for key, value in got.items():
        assert torch.equal(value, source.get(key, before[key])), key
    assert not any(torch.equal(before[k], v) for k, v in source.items() if k.endswith("conv.weight"))


def test_tiny_partial_file_is_the_tiny_cfg_body(tmp_path: Path, cfg_dir: Path, cfg_model, randomize_bn) -> None:
    """The tiny backbone's file: yolov2-tiny-voc.cfg's first 7 conv layers (its Darknet layers 0..12)."""
    torch.manual_seed(2)
    classifier = build_classifier("yolov2_tiny_voc", 10).eval()
    randomize_bn(classifier, 2)
    path = tmp_path / "tiny.conv.13.weights"
    written = save_backbone_weights(classifier, path)
    body = cfg_convs(cfg_dir / "yolov2-tiny-voc.cfg")[:7]
    assert written == path.stat().st_size == 20 + 4 * floats_of(body)
    from_cfg = cfg_model("yolov2-tiny-voc.cfg")
    load_darknet_weights(from_cfg, path, max_layers=7)
    pairs = zip(list(classifier.darknet_layers())[:7], list(from_cfg.darknet_layers())[:7], strict=True)
    for (c1, b1), (c2, b2) in pairs:
        for a, b in zip(layer_tensors(c1, b1), layer_tensors(c2, b2), strict=True):
            assert torch.equal(a, b)


def test_resnet_partial_file_fills_the_resnet_detector(tmp_path: Path, randomize_bn) -> None:
    """ResNet-18: 20 convs (stem, 16 in the blocks, 3 downsample projections), each with its batch norm."""
    torch.manual_seed(3)
    classifier = build_classifier("yolov2_resnet18", 10).eval()
    randomize_bn(classifier, 3)
    assert classifier.num_backbone_layers == 20
    path = tmp_path / "resnet18.weights"
    save_backbone_weights(classifier, path)
    assert path.stat().st_size == 20 + 4 * sum(t.numel() for t in state_values(classifier.backbone).values())
    detector = build_model("yolov2_resnet18", 20).eval()
    head_before = {k: v for k, v in state_values(detector).items() if not k.startswith("backbone.")}
    report = load_darknet_weights(detector, path, max_layers=20)
    assert report.bytes_used == path.stat().st_size
    after = state_values(detector)
    for key, value in state_values(classifier.backbone).items():
        assert torch.equal(after[f"backbone.{key}"], value), key
    assert all(torch.equal(after[k], v) for k, v in head_before.items())


# ---- the state-dict hand-over -----------------------------------------------------------------------------


def outside_backbone(detector: nn.Module) -> dict[str, torch.Tensor]:
    """The detector's tensors that are not its backbone's (whatever the backbone's attribute name: tiny's is body)."""
    inside = {t.data_ptr() for t in detector.backbone.state_dict().values()}
    return {k: v for k, v in state_values(detector).items() if detector.state_dict()[k].data_ptr() not in inside}


@pytest.mark.parametrize("name", ["yolov2_voc", "yolov2_tiny_voc", "yolov2_resnet18"])
def test_state_dict_hand_over_is_a_plain_strict_load(name: str, tmp_path: Path, randomize_bn) -> None:
    width = 1.0 if "resnet" in name else 0.25
    torch.manual_seed(4)
    classifier = build_classifier(name, 10, width_multiplier=width)
    randomize_bn(classifier, 4)
    expected = state_values(classifier.backbone)
    path = tmp_path / "backbone.pt"
    save_backbone_state(classifier, path)
    state = torch.load(path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())

    for load in (lambda d: d.backbone.load_state_dict(state), lambda d: load_backbone_state(d, path)):
        detector = build_model(name, 20, width_multiplier=width)
        rest = outside_backbone(detector)
        assert rest and len(rest) < len(state_values(detector))
        load(detector)  # load_state_dict is strict by default
        got = state_values(detector.backbone)
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], v) for k, v in expected.items())
        assert all(torch.equal(v, rest[k]) for k, v in outside_backbone(detector).items())


def test_state_dict_of_another_width_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "backbone.pt"
    save_backbone_state(build_classifier("yolov2_voc", 10, width_multiplier=0.25), path)
    detector = build_model("yolov2_voc", 20, width_multiplier=0.5)
    before = state_values(detector)
    with pytest.raises(WeightsError) as e:
        load_backbone_state(detector, path)
    assert str(path) in str(e.value) and "width_multiplier" in str(e.value) and "stage16.0.conv.weight" in str(e.value)
    assert all(torch.equal(before[k], v) for k, v in state_values(detector).items())
