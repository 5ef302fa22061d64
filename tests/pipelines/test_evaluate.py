"""The evaluate stage's parallel detections equal a plain single-process loop with the same model: the one
``evaluate.checkpoint`` names (best.pt, chosen on val; model.pt, the last; the last when there is no best.pt)."""

from __future__ import annotations

import functools
import json
import logging
import re

import numpy as np
import pytest
import torch

from pipelines import evaluate, prepare, shard
from pipelines.config import load_config
from pipelines.dag import StageResult, run_stage
from pipelines.evaluate import evaluated_checkpoint
from pipelines.workspace import Workspace
from shapes_tree import shapes_tree
from yolov2.config import PredictConfig
from yolov2.data.records import relabel_records, table_to_records
from yolov2.data.shards import iter_shard_samples
from yolov2.evaluation import compute_metrics, predict_samples
from yolov2.inference import ModelSpec, Predictor, save_model_file
from yolov2.metrics import DetectionTable
from yolov2.progress import Progress
from yolov2.wordtree import ancestors_at_depth


def _sharded(tmp_path, extra: list[str] = ()):
    """Generated data with 13 test images, sharded; the config evaluates at 96 in float32."""
    cfg = load_config(
        None,
        [
            f"workspace={tmp_path / 'ws'}",
            "data.synthetic.num_train=2",
            "data.synthetic.num_val=2",
            "data.synthetic.num_test=13",
            "shard.max_count=5",
            "evaluate.input_size=96",
            "evaluate.batch_size=4",
            "evaluate.metrics=[voc07, voc12, coco]",
            "evaluate.coco_workers=2",
            "evaluate.amp=off",  # float32, as the plain loop below
            "evaluate.channels_last=false",
            *extra,
        ],
    )
    ws = Workspace.open(cfg.workspace)
    prepared = run_stage(prepare.SPEC, cfg, ws, tracking_enabled=False)
    return cfg, ws, run_stage(shard.SPEC, cfg, ws, upstream={"prepare": prepared}, tracking_enabled=False)


def _fake_train(ws: Workspace, spec: ModelSpec) -> StageResult:
    """A train stage's output holding ``spec``'s model (random weights) as best.pt, and other weights as model.pt."""
    model_dir = ws.local_path("fake-train")
    model_dir.mkdir(parents=True)
    save_model_file(model_dir / "best.pt", spec.build(), spec)  # evaluate.checkpoint=best (the default)
    save_model_file(model_dir / "model.pt", spec.build(), spec)  # the last epoch's: other weights
    train_manifest = {
        "model": "model.pt",
        "best": "best.pt",
        "best_by": "map50_voc07",
        "best_epoch": 3,
        "best_map50_voc07": 0.25,
        "epochs": 5,
    }
    return StageResult("train", "f" * 16, "fake-train", train_manifest, cached=True, seconds=0, run_id=None)


def test_stage_detections_equal_plain_loop(ray_local, tmp_path, monkeypatch, capsys):
    cfg, ws, sharded = _sharded(tmp_path)

    torch.manual_seed(0)
    spec = ModelSpec(
        "yolov2_tiny_voc",
        5,
        [[0.5, 0.7], [1.0, 1.2], [1.6, 1.4], [2.2, 2.5], [3.0, 2.8]],
        sharded.manifest["class_names"],
        input_size=96,
        width_multiplier=0.25,
    )
    trained = _fake_train(ws, spec)
    model_dir = ws.local_path("fake-train")

    monkeypatch.setattr(evaluate, "Progress", functools.partial(Progress, interval=0))  # a line per block
    result = run_stage(evaluate.SPEC, cfg, ws, upstream={"shard": sharded, "train": trained}, tracking_enabled=False)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[evaluate]")]
    inference = [line for line in lines if line.startswith("[evaluate] inference ")]
    assert inference[0] == "[evaluate] inference 0/13 images (0%) elapsed 0:00:00"
    assert any(
        re.fullmatch(
            r"\[evaluate\] inference \d+/13 images \(\d+%\) [\d.]+ images/s, elapsed 0:00:\d\d, "
            r"ETA 0:\d\d:\d\d",
            line,
        )
        for line in inference
    ), inference
    assert inference[-1].startswith("[evaluate] inference 13/13 images (100%)")  # every image counted, once
    assert lines[-1].startswith("[evaluate] scoring 3/3 metrics (100%)")
    stage_dets = DetectionTable.from_arrow(ws.read_parquet(result.output_dir, "detections.parquet"))

    folder = ws.local_path(sharded.output_dir)
    urls = [str(folder / n) for n in sharded.manifest["splits"]["test"]["shards"]]
    assert result.manifest["checkpoint"] == {
        "checkpoint": "best",
        "file": "best.pt",
        "epoch": 3,
        "chosen_by": "val map50_voc07",
        "chosen_value": 0.25,
    }
    predictor = Predictor.from_file(
        model_dir / "best.pt", PredictConfig(input_size=96, conf_thresh=cfg.evaluate.predict.conf_thresh)
    )
    plain, records = predict_samples(predictor, ((img, rec) for _, img, rec in iter_shard_samples(urls)), batch_size=3)

    assert len(plain) > 13  # a random model still produces plenty of low-score boxes
    assert stage_dets.image_id.tolist() == plain.image_id.tolist()
    np.testing.assert_array_equal(stage_dets.label, plain.label)
    np.testing.assert_allclose(stage_dets.score, plain.score, rtol=1e-6)
    np.testing.assert_allclose(stage_dets.boxes, plain.boxes, rtol=1e-5, atol=1e-3)

    index_records = table_to_records(ws.read_parquet(sharded.output_dir, "test-index.parquet"))
    expected, _ = compute_metrics(index_records, plain, sharded.manifest["class_names"], ["voc07", "voc12", "coco"])
    metrics = json.loads((ws.local_path(result.output_dir) / "metrics.json").read_text())["metrics"]
    for key in ("map50_voc07", "map50_voc12", "coco_AP", "coco_AP50"):
        assert abs(metrics[key] - expected[key]) < 1e-6, key
    assert result.manifest["images"] == 13


def test_the_checkpoint_evaluated_is_the_one_asked_for_and_the_last_without_a_val_split(caplog):
    trained = {"model": "model.pt", "best": "best.pt", "best_epoch": 4, "best_map50_voc07": 0.5, "epochs": 9}
    last = {"checkpoint": "last", "file": "model.pt", "epoch": 9, "chosen_by": None, "chosen_value": None}
    assert evaluated_checkpoint("last", trained) == last
    assert evaluated_checkpoint("best", trained) == {
        "checkpoint": "best",
        "file": "best.pt",
        "epoch": 4,
        "chosen_by": "val map50_voc07",
        "chosen_value": 0.5,
    }
    no_val = {"model": "model.pt", "best": None, "best_map50_voc07": -1.0, "epochs": 9}
    with caplog.at_level(logging.WARNING, logger="pipelines.evaluate"):
        assert evaluated_checkpoint("best", no_val) == last
    assert any("no val split" in r.getMessage() and "last model" in r.getMessage() for r in caplog.records)


def test_a_tree_model_is_scored_at_the_depth_asked_for(ray_local, tmp_path):
    """evaluate.tree_depth=0 (YOLO9000): the five shapes under their two parents; detections and ground truth
    both at the roots, as a plain loop with the Predictor and relabelled records gives them."""
    cfg, ws, sharded = _sharded(tmp_path, ["evaluate.tree_depth=0", "evaluate.metrics=[voc07]"])
    names = sharded.manifest["class_names"]
    tree = shapes_tree()
    torch.manual_seed(0)
    spec = ModelSpec(
        "yolov2_tiny_voc", tree.num_nodes, [[1.0, 1.2], [2.2, 2.5]], names, input_size=96, width_multiplier=0.25,
        tree={"names": list(tree.names), "parents": list(tree.parents)},
        tree_classes=[tree.names.index(n) for n in names],
    )  # fmt: skip
    result = run_stage(
        evaluate.SPEC, cfg, ws, upstream={"shard": sharded, "train": _fake_train(ws, spec)}, tracking_enabled=False
    )
    report = json.loads((ws.local_path(result.output_dir) / "metrics.json").read_text())
    assert [row["class"] for row in report["results"]["voc07"]["per_class"]] == ["round", "angular"]

    predictor = Predictor.from_file(ws.local_path("fake-train", "best.pt"), cfg.evaluate.predict)
    urls = [str(ws.local_path(sharded.output_dir, n)) for n in sharded.manifest["splits"]["test"]["shards"]]
    plain, records = predict_samples(predictor, ((img, rec) for _, img, rec in iter_shard_samples(urls)), batch_size=3)
    assert set(plain.label.tolist()) == {0, 1}
    _, at_roots = ancestors_at_depth(tree, spec.tree_classes, 0)
    expected, _ = compute_metrics(relabel_records(records, at_roots), plain, ["round", "angular"], ["voc07"])
    assert report["metrics"]["map50_voc07"] == pytest.approx(expected["map50_voc07"], abs=1e-9)
