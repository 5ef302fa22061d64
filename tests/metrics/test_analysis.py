"""yolov2/metrics/analysis.py: PR curves, confusion matrix and error breakdown on hand-made cases
(expected values worked out in the comments) and against a brute-force greedy matcher."""

from __future__ import annotations

import numpy as np
import pytest

from yolov2.data.records import ImageRecord
from yolov2.metrics.analysis import (
    ERROR_TYPES,
    coco_pr_curves,
    confusion_matrix,
    error_breakdown,
    voc_pr_curves,
)
from yolov2.metrics.coco import RECALL_THRESHOLDS, coco_evaluate
from yolov2.metrics.detections import DetectionTable
from yolov2.metrics.voc import voc_evaluate


def rec(image_id, boxes, labels, difficult=None):
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    n = len(boxes)
    diff = np.zeros(n, bool) if difficult is None else difficult
    return ImageRecord(image_id, "t", "", 100, 100, boxes, labels, diff, np.zeros(n, bool))


def error_case():
    records = [
        rec("A", [[0, 0, 10, 10], [50, 50, 60, 60]], [0, 1]),
        rec("B", [[0, 0, 10, 10]], [1]),
        rec("C", [], []),
    ]
    rows = [
        ("A", 0, 0.9, [0, 0, 10, 10]),  # TP on the class-0 box
        ("A", 0, 0.8, [0, 0, 10, 10]),  # same box again: duplicate
        ("A", 0, 0.7, [0, 0, 10, 25]),  # IoU 100/250 = 0.4 with its class's box: localization
        ("A", 0, 0.6, [50, 50, 60, 60]),  # perfect box on the class-1 object: classification
        ("A", 0, 0.5, [80, 80, 90, 90]),  # overlaps nothing: background
        ("A", 1, 0.4, [0, 0, 10, 30]),  # IoU 1/3 with the class-0 box, none with its own: both
        ("C", 1, 0.3, [0, 0, 10, 10]),  # image without ground truth: background
    ]  # B's box is never detected: missed; A's class-1 box is the target of the classification error
    dets = DetectionTable.from_arrays(*zip(*rows))
    return records, dets


def test_error_breakdown_on_one_of_each():
    records, dets = error_case()
    b = error_breakdown(records, dets, 2)
    assert b.category.tolist() == [
        "tp",
        "duplicate",
        "localization",
        "classification",
        "background",
        "both",
        "background",
    ]
    assert b.counts == {"localization": 1, "classification": 1, "duplicate": 1, "background": 2, "both": 1,
                        "missed": 1, "true_positives": 1}  # fmt: skip
    assert b.per_class["background"].tolist() == [1, 1]
    assert b.per_class["missed"].tolist() == [0, 1]
    assert set(b.to_dict(["a", "b"])["counts"]) == set(ERROR_TYPES) | {"true_positives"}


def test_error_breakdown_accounts_for_every_detection():
    rng = np.random.default_rng(0)
    records = []
    for i in range(20):
        xy = rng.uniform(0, 60, (4, 2))
        records.append(rec(str(i), np.concatenate([xy, xy + 25], 1), rng.integers(0, 3, 4), rng.random(4) < 0.2))
    n = 300
    src = rng.integers(0, 20, n)
    xy = rng.uniform(0, 70, (n, 2))
    dets = DetectionTable.from_arrays(
        [str(s) for s in src], rng.integers(0, 3, n), rng.random(n), np.concatenate([xy, xy + 25], 1)
    )
    b = error_breakdown(records, dets, 3)
    voc = voc_evaluate(records, dets, ["a", "b", "c"], pixel_convention="continuous")
    fp_types = [t for t in ERROR_TYPES if t != "missed"]
    assert sum(b.counts[t] for t in fp_types) == voc.false_positives.sum()
    assert b.counts["true_positives"] == voc.true_positives.sum()
    assert (b.category != "").all()
    assert b.counts["missed"] <= voc.npos.sum() - voc.true_positives.sum()


def brute_force_confusion(records, dets, num_classes, iou_thr, score_thr):
    """Greedy one-to-one matching by decreasing IoU with plain loops, image by image."""
    m = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    for r in records:
        idx = [i for i in range(len(dets)) if dets.image_id[i] == r.image_id and dets.score[i] >= score_thr]
        pairs = []
        for d in idx:
            for g in range(r.num_boxes):
                a, b = dets.boxes[d], r.boxes[g].astype(np.float64)
                iw = min(a[2], b[2]) - max(a[0], b[0])
                ih = min(a[3], b[3]) - max(a[1], b[1])
                inter = max(iw, 0) * max(ih, 0)
                iou = inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
                if iou >= iou_thr:
                    pairs.append((-iou, -dets.score[d], d, g))
        pairs.sort()
        used_d, used_g = set(), set()
        for _, _, d, g in pairs:
            if d not in used_d and g not in used_g:
                used_d.add(d)
                used_g.add(g)
                if not r.difficult[g]:
                    m[dets.label[d], r.labels[g]] += 1
        for d in idx:
            if d not in used_d:
                m[dets.label[d], num_classes] += 1
        for g in range(r.num_boxes):
            if g not in used_g and not r.difficult[g]:
                m[num_classes, r.labels[g]] += 1
    return m


def test_confusion_matrix_hand_case():
    records, dets = error_case()
    m = confusion_matrix(records, dets, 2, iou_threshold=0.5, score_threshold=0.0)
    # A: class-0 box <- the 0.9 detection (IoU 1, best score); class-1 box <- the class-0 detection at 0.6.
    assert m[0, 0] == 1 and m[0, 1] == 1
    assert m[0, 2] == 3  # the duplicate, the poor box, the background one
    assert m[1, 2] == 2  # the 'both' one (IoU 1/3 < 0.5) and the one on image C
    assert m[2, 1] == 1 and m[2, 0] == 0  # image B's box missed
    assert m.sum() == len(dets) + 1


@pytest.mark.parametrize("seed", [0, 1])
def test_confusion_matrix_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    records = []
    for i in range(15):
        k = int(rng.integers(0, 5))
        xy = rng.uniform(0, 50, (k, 2))
        records.append(
            rec(
                str(i),
                np.concatenate([xy, xy + rng.uniform(10, 30, (k, 2))], 1),
                rng.integers(0, 3, k),
                rng.random(k) < 0.2,
            )
        )
    n = 120
    src = rng.integers(0, 15, n)
    boxes = []
    for s in src:
        r = records[s]
        if r.num_boxes and rng.random() < 0.7:
            boxes.append(r.boxes[rng.integers(0, r.num_boxes)] + rng.normal(0, 3, 4))
        else:
            xy = rng.uniform(0, 60, 2)
            boxes.append(np.concatenate([xy, xy + 20]))
    boxes = np.array(boxes, np.float64)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    dets = DetectionTable.from_arrays([str(s) for s in src], rng.integers(0, 3, n), np.round(rng.random(n), 1), boxes)
    for thr, score in ((0.5, 0.25), (0.3, 0.0)):
        np.testing.assert_array_equal(
            confusion_matrix(records, dets, 3, thr, score), brute_force_confusion(records, dets, 3, thr, score)
        )


def test_voc_pr_curves_follow_the_result():
    records, dets = error_case()
    result = voc_evaluate(records, dets, ["a", "b"])
    curves = voc_pr_curves(result)
    assert [c.class_name for c in curves] == ["a", "b"]
    a = curves[0]
    # class a: TP, dup, loc, cls, bkg in score order; one class-a box -> precision 1, 1/2, 1/3, 1/4, 1/5
    np.testing.assert_allclose(a.precision, [1, 1 / 2, 1 / 3, 1 / 4, 1 / 5])
    np.testing.assert_allclose(a.recall, [1, 1, 1, 1, 1])
    np.testing.assert_allclose(a.envelope, a.precision)  # already decreasing
    np.testing.assert_allclose(a.scores, [0.9, 0.8, 0.7, 0.6, 0.5])
    assert a.ap == 1.0 and curves[1].ap == 0.0


def test_pr_envelope_is_the_running_max_from_the_right():
    records = [rec("A", [[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0])]
    dets = DetectionTable.from_arrays(
        ["A"] * 3, [0] * 3, [0.9, 0.8, 0.7], [[50, 50, 60, 60], [0, 0, 10, 10], [20, 20, 30, 30]]
    )
    (curve,) = voc_pr_curves(voc_evaluate(records, dets, ["a"]))
    np.testing.assert_allclose(curve.precision, [0, 1 / 2, 2 / 3])
    np.testing.assert_allclose(curve.envelope, [2 / 3, 2 / 3, 2 / 3])


def test_coco_pr_curves_are_pycocotools_precision_at_iou_half():
    records, dets = error_case()
    result = coco_evaluate(records, dets, ["a", "b"], backend="pycocotools")
    curves = coco_pr_curves(result)
    np.testing.assert_array_equal(curves[0].recall, RECALL_THRESHOLDS)
    np.testing.assert_array_equal(np.nan_to_num(curves[0].precision, nan=-1), result.precision[0, :, 0, 0, -1])
