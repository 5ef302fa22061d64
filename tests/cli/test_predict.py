"""`yolov2 predict` on two real VOC images with a small random model: files written, boxes in bounds,
and the same detections as the Predictor gives when called directly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from yolov2.cli import main
from yolov2.config import PredictConfig
from yolov2.engine.precision import FLOAT32, choose_precision, detect_hardware
from yolov2.inference import ModelSpec, Predictor, save_model_file
from yolov2.models import build_model

IMAGES = ["2007_000027.jpg", "2007_000032.jpg"]  # 486x500 portrait and 500x281 landscape
NAMES = ["cat", "dog", "person"]
ARGS = ["--input-size", "128", "--conf", "0.02", "--nms", "0.45", "--max-det", "30"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model("yolov2_tiny_voc", len(NAMES), width_multiplier=0.25)
    spec = ModelSpec("yolov2_tiny_voc", len(NAMES), [list(a) for a in model.default_anchors], NAMES, 128, 0.25)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model_file(path, model, spec)
    return path


@pytest.fixture(scope="module")
def source(shared_data: Path, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for name in IMAGES:
        shutil.copy(shared_data / "voc100" / "JPEGImages" / name, folder / name)
    return folder


def rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_predict_folder(model_file: Path, source: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["predict", "--weights", str(model_file), "--source", str(source), "--out", str(out), *ARGS]) == 0
    assert "2 image(s)" in capsys.readouterr().out
    results = json.loads((out / "detections.json").read_text())
    assert [Path(r["image"]).name for r in results] == IMAGES
    auto = choose_precision(detect_hardware("cpu"))  # what --amp auto --channels-last auto pick on this machine
    direct = Predictor.from_file(
        model_file, PredictConfig(input_size=128, conf_thresh=0.02, nms_thresh=0.45, max_det=30), precision=auto
    )([rgb(source / name) for name in IMAGES])
    total = 0
    for name, result, expected in zip(IMAGES, results, direct):
        h, w = rgb(source / name).shape[:2]
        drawn = cv2.imread(str(out / name))
        assert drawn is not None and drawn.shape == (h, w, 3)
        dets = result["detections"]
        total += len(dets)
        assert 0 < len(dets) <= 30
        boxes = np.array([d["box_xyxy"] for d in dets])
        scores = np.array([d["score"] for d in dets])
        assert np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 1] >= 0)
        assert np.all(boxes[:, 2] <= w) and np.all(boxes[:, 3] <= h)
        assert np.all(boxes[:, 0] <= boxes[:, 2]) and np.all(boxes[:, 1] <= boxes[:, 3])
        assert np.all(scores > 0.02) and np.all(np.diff(scores) <= 0)
        assert all(d["name"] == NAMES[d["label"]] for d in dets)
        np.testing.assert_allclose(boxes, expected.boxes.numpy(), rtol=0, atol=1e-3)
        np.testing.assert_allclose(scores, expected.scores.numpy(), rtol=0, atol=1e-6)
        assert [d["label"] for d in dets] == expected.labels.tolist()
    assert total > 0


def test_predict_single_image(model_file: Path, source: Path, tmp_path: Path) -> None:
    out = tmp_path / "one"
    argv = ["predict", "--weights", str(model_file), "--source", str(source / IMAGES[1]), "--out", str(out), *ARGS]
    assert main(argv) == 0
    results = json.loads((out / "detections.json").read_text())
    assert len(results) == 1 and (out / IMAGES[1]).is_file()


def test_predict_in_float32_when_asked(model_file: Path, source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [
        "predict",
        "--weights",
        str(model_file),
        "--source",
        str(source),
        "--out",
        str(out),
        *ARGS,
        "--amp",
        "off",
        "--channels-last",
        "false",
    ]
    assert main(argv) == 0
    results = json.loads((out / "detections.json").read_text())
    direct = Predictor.from_file(
        model_file, PredictConfig(input_size=128, conf_thresh=0.02, nms_thresh=0.45, max_det=30), precision=FLOAT32
    )([rgb(source / name) for name in IMAGES])
    for result, expected in zip(results, direct):
        boxes = np.array([d["box_xyxy"] for d in result["detections"]])
        np.testing.assert_allclose(boxes, expected.boxes.numpy(), rtol=0, atol=1e-3)


def test_predict_a_tree_model_by_the_walk_names_tree_nodes(source: Path, tmp_path: Path) -> None:
    """A YOLO9000 model: --tree-walk labels boxes with tree nodes (named from the tree), scored by objectness."""
    from test_hierarchy import HAND

    torch.manual_seed(0)
    spec = ModelSpec(
        "yolov2_tiny_voc", HAND.num_nodes, [[1.0, 1.5], [3.0, 2.0]], ["cat", "pug"], 128, 0.25,
        tree={"names": list(HAND.names), "parents": list(HAND.parents)}, tree_classes=[3, 7],
    )  # fmt: skip
    model_file = tmp_path / "tree.pt"
    save_model_file(model_file, spec.build(), spec)
    for walk in (False, True):
        out = tmp_path / f"walk-{walk}"
        argv = ["predict", "--weights", str(model_file), "--source", str(source), "--out", str(out), *ARGS]
        assert main(argv + (["--tree-walk", "--hier", "0.3"] if walk else [])) == 0
        dets = [d for r in json.loads((out / "detections.json").read_text()) for d in r["detections"]]
        names = list(HAND.names) if walk else ["cat", "pug"]
        assert dets and all(d["name"] == names[d["label"]] for d in dets)
    predictor = Predictor.from_file(model_file, PredictConfig(input_size=128, tree_walk=True, hier_thresh=0.3))
    assert predictor.label_names == list(HAND.names) and predictor.tree_classes is None
