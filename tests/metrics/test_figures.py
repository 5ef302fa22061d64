"""yolov2/metrics/figures.py: every figure renders to a real PNG, headless, without pyplot."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from yolov2.data.voc import VOC_CLASSES, read_voc
from yolov2.metrics.coco import coco_evaluate
from yolov2.metrics.detections import DetectionTable
from yolov2.metrics.figures import evaluation_figures, results_figure
from yolov2.metrics.voc import voc_evaluate


def png_size(fig) -> tuple[int, int]:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=50)
    image = Image.open(io.BytesIO(buffer.getvalue()))
    assert image.format == "PNG"
    return image.size


def voc_case(shared_data: Path, n: int = 12):
    records, _ = read_voc(shared_data / "voc100", "test", check_images=False)
    records = records[:n]
    rng = np.random.default_rng(0)
    ids = [r.image_id for r in records for _ in range(r.num_boxes)]
    boxes = np.concatenate([r.boxes for r in records]).astype(np.float64) + rng.normal(0, 8, (len(ids), 4))
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 2)
    labels = np.concatenate([r.labels for r in records])
    dets = DetectionTable.from_arrays(ids, labels, rng.random(len(ids)), boxes)
    return records, dets


def test_evaluation_figures_with_voc_and_coco_results(shared_data: Path):
    records, dets = voc_case(shared_data)
    results = {
        "voc12": voc_evaluate(records, dets, VOC_CLASSES),
        "coco": coco_evaluate(records, dets, VOC_CLASSES, backend="pycocotools"),
    }
    figures = evaluation_figures(records, dets, VOC_CLASSES, results, num_sample_images=4)
    assert set(figures) == {"pr_curves.png", "confusion_matrix.png", "error_breakdown.png", "sample_detections.png"}
    for fig in figures.values():
        w, h = png_size(fig)
        assert w > 100 and h > 100
    coco_only = evaluation_figures(records, dets, VOC_CLASSES, {"coco": results["coco"]}, num_sample_images=0)
    assert set(coco_only) == {"pr_curves.png", "confusion_matrix.png", "error_breakdown.png"}


def test_sample_images_are_skipped_when_no_file_is_readable(shared_data: Path):
    records, dets = voc_case(shared_data, n=3)
    for r in records:
        r.path = "/nonexistent/" + r.image_id + ".jpg"
    figures = evaluation_figures(
        records, dets, VOC_CLASSES, {"voc07": voc_evaluate(records, dets, VOC_CLASSES, use_07_metric=True)}
    )
    assert "sample_detections.png" not in figures


def test_figures_module_needs_no_pyplot():
    code = (
        "import sys, numpy as np; import yolov2.metrics.figures as f; "
        "from yolov2.metrics.analysis import ErrorBreakdown, ERROR_TYPES; "
        "b = ErrorBreakdown({t: 1 for t in ERROR_TYPES} | {'true_positives': 2}, {}, np.array([]), 0.5, 0.1); "
        "f.error_breakdown_figure(b).savefig('/dev/null', format='png'); "
        "assert 'matplotlib.pyplot' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_results_figure_draws_losses_lr_and_the_validated_epochs_only():
    columns = {
        "epoch": [1, 2, 3],
        "step": [10, 20, 30],
        "loss_total": [9.0, 6.0, 4.0],
        "loss_coord": [2.0, 1.5, 1.0],
        "lr": [0.001, 0.001, 0.0001],
        "val_map50_voc07": [None, 0.2, 0.3],
        "val_coco_ap": [None, None, 0.1],
        "images_per_s": [5.0, 5.0, 5.0],
    }
    fig = results_figure(columns)
    losses, lr, val = fig.axes
    assert [line.get_label() for line in losses.lines] == ["total", "coord"]
    assert lr.lines[0].get_ydata().tolist() == [0.001, 0.001, 0.0001]
    drawn = {line.get_label(): line.get_xdata().tolist() for line in val.lines}
    assert drawn == {"map50_voc07": [2.0, 3.0], "coco_ap": [3.0]}  # epochs without validation are left out
    w, h = png_size(fig)
    assert w > 300 and h > 100
