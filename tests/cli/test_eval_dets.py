"""`yolov2 eval-dets` on the metric cases, against the numbers their authors published.

* Padilla's sample: AP 24.57 % (all-point) at IoU 0.3 (Object-Detection-Metrics README; 0.2456866804
  in review_object_detection_metrics tests/test_eval_pascal.py).
* toy_cat: 89.58 % all-point at IoU 0.5 (review_object_detection_metrics README).
* coco_val2014_sample: the pycocotools numbers in review_object_detection_metrics
  tests/test_coco_eval.py (AP 0.503647, AP50 0.696973, ...), and pycocotools run here.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from yolov2.cli import main as yolov2_main
from yolov2.cli.eval_dets import main

PUBLISHED_COCO = {"AP": 0.503647, "AP50": 0.696973, "AP75": 0.571667, "APs": 0.593252, "APm": 0.557991,
                  "APl": 0.489363, "AR1": 0.386813, "AR10": 0.593680, "AR100": 0.595353, "ARs": 0.654764,
                  "ARm": 0.603130, "ARl": 0.553744}  # fmt: skip


def run_json(capsys, *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # exactly one JSON object, one line
    return json.loads(out)


def test_padilla_sample_json(capsys, shared_data: Path):
    case = shared_data / "metric_cases" / "padilla2018"
    report = run_json(capsys, "--gt", str(case / "groundtruths"), "--dets", str(case / "detections"),
                      "--metric", "voc12", "--iou", "0.3")  # fmt: skip
    assert report["mAP"] == pytest.approx(0.2456866804, abs=1e-10)
    assert report["per_class"] == [
        {"class": "person", "ap": report["mAP"], "npos": 15, "detections": 24, "tp": 7, "fp": 17}
    ]
    report07 = run_json(capsys, "--gt", str(case / "groundtruths"), "--dets", str(case / "detections"),
                        "--metric", "voc07", "--iou", "0.3")  # fmt: skip
    assert report07["mAP"] == pytest.approx(0.2683982683, abs=1e-10)


def test_toy_cat_table_through_the_yolov2_command(capsys, shared_data: Path, tmp_path: Path):
    case = shared_data / "metric_cases" / "toy_cat"
    argv = ["eval-dets", "--gt", str(case), "--dets", str(case / "detections"), "--metric", "voc12",
            "--box-format", "xyxy", "--plots", str(tmp_path / "plots")]  # fmt: skip
    assert yolov2_main(argv) == 0
    out = capsys.readouterr().out
    assert "cat      89.58" in out and out.rstrip().endswith("mAP = 89.58 %")
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "confusion_matrix.png",
        "error_breakdown.png",
        "pr_curves.png",
    ]


def test_coco_sample_gives_pycocotools_numbers(capsys, shared_data: Path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    case = shared_data / "metric_cases" / "coco_val2014_sample"
    gt, dets = case / "instances_sample.json", case / "detections.json"
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt))
        ev = COCOeval(coco_gt, coco_gt.loadRes(str(dets)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    for backend, workers in (("pycocotools", "1"), ("faster_coco_eval", "2")):
        report = run_json(capsys, "--gt", str(gt), "--dets", str(dets), "--metric", "coco", "--backend", backend,
                          "--workers", workers)  # fmt: skip
        stats = np.array(list(report["stats"].values()))
        assert list(report["stats"]) == list(PUBLISHED_COCO)
        np.testing.assert_allclose(stats, list(PUBLISHED_COCO.values()), atol=1e-6)
        np.testing.assert_allclose(stats, ev.stats, rtol=0, atol=0 if backend == "pycocotools" else 1e-12)
        assert report["images"] == 100 and report["detections"] == 734


def test_errors_are_reported_not_raised(capsys, tmp_path: Path):
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "a.txt").write_text("dog 1 2 3 4\n")
    (tmp_path / "dets").mkdir()
    (tmp_path / "dets" / "a.txt").write_text("cat 0.5 1 2 3 4\n")
    assert main(["--gt", str(tmp_path / "gt"), "--dets", str(tmp_path / "dets"), "--metric", "voc12"]) == 2
    err = capsys.readouterr().err
    assert "unknown class 'cat'" in err and "a.txt:1" in err
    assert (
        main(["--gt", str(tmp_path / "gt"), "--dets", str(tmp_path / "dets"), "--metric", "coco", "--iou", "0.5"]) == 2
    )
    assert "--iou applies to voc07/voc12" in capsys.readouterr().err
