"""ONNX export checked by running ONNX Runtime against torch; Darknet export checked by loading it back
through the cfg parser. Narrow models (width 0.25) at small inputs keep this fast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from yolov2.errors import ConfigError  # noqa: E402
from yolov2.export import export_darknet, export_onnx  # noqa: E402
from yolov2.models import build_from_darknet_cfg, build_model, load_darknet_weights  # noqa: E402

NUM_CLASSES = 3
ANCHORS = [(1.0, 1.5), (2.5, 2.0), (4.0, 5.0)]
# (batch, height, width): two batch sizes and two input sizes through one exported file
SHAPES = [(1, 64, 64), (3, 96, 128)]


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)


@pytest.fixture(scope="module", params=["yolov2_voc", "yolov2_tiny_voc"])
def model(request) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_model(request.param, NUM_CLASSES, num_anchors=len(ANCHORS), width_multiplier=0.25)
    randomize_bn(m)
    return m.eval()


def session(path: Path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def reference_decode(raw: torch.Tensor, anchors: list[tuple[float, float]], num_classes: int):
    """REFERENCE.md "Location prediction", one anchor and cell at a time, in (anchor, row, column) order:
    boxes xyxy normalised to the input, objectness, class probabilities."""
    b, _, h, w = raw.shape
    boxes, obj, probs = [], [], []
    for a, (pw, ph) in enumerate(anchors):
        p = raw[:, a * (5 + num_classes) : (a + 1) * (5 + num_classes)].double()
        for j in range(h):
            for i in range(w):
                bx = (i + torch.sigmoid(p[:, 0, j, i])) / w
                by = (j + torch.sigmoid(p[:, 1, j, i])) / h
                bw = pw * torch.exp(p[:, 2, j, i]) / w
                bh = ph * torch.exp(p[:, 3, j, i]) / h
                boxes.append(torch.stack([bx - bw / 2, by - bh / 2, bx + bw / 2, by + bh / 2], 1))
                obj.append(torch.sigmoid(p[:, 4, j, i]))
                probs.append(torch.softmax(p[:, 5:, j, i], 1))
    return torch.stack(boxes, 1), torch.stack(obj, 1), torch.stack(probs, 1)


def test_raw_output_matches_torch_with_dynamic_axes(model, tmp_path: Path) -> None:
    path = export_onnx(model, tmp_path / "raw.onnx", input_size=64)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in proto.graph.input] == ["images"]
    s = session(path)
    for batch, height, width in SHAPES:
        x = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(height))
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = s.run(None, {"images": x.numpy()})
        assert got.shape == (batch, len(ANCHORS) * (5 + NUM_CLASSES), height // 32, width // 32)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_decode_head_matches_reference_decode(model, tmp_path: Path) -> None:
    path = export_onnx(
        model, tmp_path / "decoded.onnx", input_size=64, with_decode=True, anchors=ANCHORS, num_classes=NUM_CLASSES
    )
    s = session(path)
    assert [o.name for o in s.get_outputs()] == ["boxes", "objectness", "class_probs"]
    for batch, height, width in SHAPES:
        x = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(width))
        with torch.no_grad():
            expected = reference_decode(model(x), ANCHORS, NUM_CLASSES)
        got = s.run(None, {"images": x.numpy()})
        n = len(ANCHORS) * (height // 32) * (width // 32)
        assert [g.shape for g in got] == [(batch, n, 4), (batch, n), (batch, n, NUM_CLASSES)]
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e.float().numpy(), rtol=0, atol=1e-4)


def test_static_export_and_mode_restored(model, tmp_path: Path) -> None:
    model.train()
    try:
        path = export_onnx(model, tmp_path / "static.onnx", input_size=(64, 96), dynamic=False)
        assert model.training
    finally:
        model.eval()
    dims = [d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 64, 96]


def test_export_onnx_refuses_bad_arguments(model, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="opset 13"):
        export_onnx(model, tmp_path / "a.onnx", opset=13)
    with pytest.raises(ConfigError, match="divisible by 32"):
        export_onnx(model, tmp_path / "a.onnx", input_size=100)
    bare = torch.nn.Conv2d(3, 8, 3)
    with pytest.raises(ConfigError, match="anchors and num_classes"):
        export_onnx(bare, tmp_path / "a.onnx", input_size=64, with_decode=True)
    assert list(tmp_path.iterdir()) == []


def test_darknet_export_loads_back_through_the_cfg(model, tmp_path: Path) -> None:
    name = "yolov2_voc" if hasattr(model, "reorg") else "yolov2_tiny_voc"
    names = ["cat", "dog", "bird"]
    written = export_darknet(
        model,
        tmp_path / "out" / "m.weights",
        name=name,
        anchors=ANCHORS,
        width_multiplier=0.25,
        input_size=64,
        class_names=names,
        seen=640,
    )
    weights, cfg, names_file = (tmp_path / "out" / f"m.{ext}" for ext in ("weights", "cfg", "names"))
    assert written == [weights, cfg, names_file]
    assert names_file.read_text().split() == names
    data = weights.read_bytes()
    values = sum(t.numel() for k, t in model.state_dict().items() if not k.endswith("num_batches_tracked"))
    assert len(data) == 20 + 4 * values  # header + every weight, bias and BN statistic
    assert np.frombuffer(data[:12], "<i4").tolist() == [0, 2, 0] and np.frombuffer(data[12:20], "<i8")[0] == 640
    net = build_from_darknet_cfg(cfg).eval()
    assert net.region["anchors"] == ANCHORS and net.region["classes"] == NUM_CLASSES
    load_darknet_weights(net, weights)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=0, atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.cfg", "m.names", "m.weights"]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"sppf": True}, "SPPF"),
        ({"decoupled_head": True}, "decoupled"),
        ({"reorg": "pixel_unshuffle"}, "pixel_unshuffle"),
    ],
)
def test_darknet_export_refuses_layers_darknet_lacks(kwargs, match: str, tmp_path: Path) -> None:
    m = build_model("yolov2_voc", NUM_CLASSES, num_anchors=len(ANCHORS), width_multiplier=0.25, **kwargs)
    with pytest.raises(ConfigError, match=match):
        export_darknet(m, tmp_path / "m.weights", name="yolov2_voc", anchors=ANCHORS, width_multiplier=0.25)
    assert list(tmp_path.iterdir()) == []


def test_a_tree_model_exports_its_group_softmaxes(tmp_path: Path) -> None:
    """YOLO9000: class_probs of the decode head are the tree's absolute probabilities, as yolov2's decode gives."""
    from test_hierarchy import HAND
    from yolov2.postprocess import decode

    torch.manual_seed(0)
    m = build_model("yolov2_tiny_voc", HAND.num_nodes, num_anchors=len(ANCHORS), width_multiplier=0.25).eval()
    randomize_bn(m)
    path = export_onnx(
        m, tmp_path / "tree.onnx", 64, with_decode=True, anchors=ANCHORS, num_classes=HAND.num_nodes, tree=HAND
    )
    s = session(path)
    for batch, height, width in SHAPES:
        x = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = decode(m(x), torch.tensor(ANCHORS), HAND.num_nodes, HAND)
        got = s.run(None, {"images": x.numpy()})
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e.numpy(), rtol=0, atol=1e-5)
        np.testing.assert_allclose(got[2][..., [0, 1]].sum(-1), 1.0, atol=1e-5)  # the roots: animal, plant
