"""`yolov2 export`: a model file to ONNX (run in ONNX Runtime) and to Darknet (loaded back through the cfg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")

from yolov2.cli import main  # noqa: E402
from yolov2.inference import ModelSpec, load_model_file, save_model_file  # noqa: E402
from yolov2.models import build_from_darknet_cfg, build_model, load_darknet_weights  # noqa: E402

NAMES = ["a", "b"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model("yolov2_voc", len(NAMES), width_multiplier=0.25)
    spec = ModelSpec("yolov2_voc", len(NAMES), [list(a) for a in model.default_anchors], NAMES, 64, 0.25)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model_file(path, model, spec)
    return path


def test_export_onnx(model_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "m.onnx"
    assert main(["export", "--weights", str(model_file), "--format", "onnx", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    model, _ = load_model_file(model_file)
    s = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 64, 64), (2, 3, 96, 64)]:
        x = torch.rand(*shape)
        with torch.no_grad():
            np.testing.assert_allclose(s.run(None, {"images": x.numpy()})[0], model(x).numpy(), rtol=0, atol=1e-4)


def test_export_onnx_with_decode(model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "d.onnx"
    assert (
        main(
            [
                "export",
                "--weights",
                str(model_file),
                "--format",
                "onnx",
                "--out",
                str(out),
                "--with-decode",
                "--input-size",
                "96",
            ]
        )
        == 0
    )
    s = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    boxes, objectness, probs = s.run(None, {"images": np.random.default_rng(0).random((2, 3, 64, 128), np.float32)})
    n = 5 * 2 * 4
    assert boxes.shape == (2, n, 4) and objectness.shape == (2, n) and probs.shape == (2, n, len(NAMES))
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_export_darknet(model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "dk" / "m.weights"
    assert main(["export", "--weights", str(model_file), "--format", "darknet", "--out", str(out)]) == 0
    assert (tmp_path / "dk" / "m.names").read_text().split() == NAMES
    net = build_from_darknet_cfg(tmp_path / "dk" / "m.cfg").eval()
    report = load_darknet_weights(net, out)
    assert report.layers_loaded == report.layers_total == 23
    model, _ = load_model_file(model_file)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=0, atol=1e-6)
