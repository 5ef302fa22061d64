"""yolov2/metrics/voc.py against published numbers and a plain re-implementation of the devkit.

References:
* Padilla's sample (metric_cases/padilla2018): AP published in rafaelpadilla/Object-Detection-Metrics
  README (IoU 0.3: 24.57 % all-point, 26.84 % 11-point) and, to 10 digits for IoU 0.1/0.3/0.5/0.75,
  in rafaelpadilla/review_object_detection_metrics tests/test_eval_pascal.py (same sample).
* toy_cat: review_object_detection_metrics README "A practical example": IoU 0.5 -> 88.64 % (11-point),
  89.58 % (all-point); IoU 0.75 -> 49.24 %, 50.97 %.
* ``devkit_ap`` below: VOCevaldet.m / voc_eval.py written as plain loops, one detection at a time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from yolov2.data.records import ImageRecord
from yolov2.data.voc import VOC_CLASSES, read_voc
from yolov2.errors import ConfigError, DatasetError
from yolov2.metrics.detections import DetectionTable, GroundTruthArrays
from yolov2.metrics.formats import read_detections, read_ground_truth
from yolov2.metrics.voc import match_detections, voc_ap, voc_evaluate

PADILLA_11PT = {0.1: 0.3333333333, 0.3: 0.2683982683, 0.5: 0.0303030303, 0.75: 0.0}
PADILLA_ALL = {0.1: 0.3371980676, 0.3: 0.2456866804, 0.5: 0.0222222222, 0.75: 0.0}
TOY_CAT = {0.5: (0.8864, 0.8958), 0.75: (0.4924, 0.5097)}  # (11-point, all-point), published in %, 2 decimals


# --- the independent reference: the devkit's loop, one detection at a time --------------------------


def devkit_ap(records, dets, num_classes, thr, use_07, inclusive=True):
    """Per-class AP following VOCevaldet.m (>= threshold, iw/ih > 0, no fallback) and voc_eval.py's voc_ap."""
    aps = []
    for c in range(num_classes):
        gt = {}
        npos = 0
        for r in records:
            keep = r.labels == c
            boxes = [[float(v) for v in b] for b in r.boxes[keep]]
            if inclusive:
                boxes = [[b[0] + 1.0, b[1] + 1.0, b[2], b[3]] for b in boxes]
            diff = [bool(d or k) for d, k in zip(r.difficult[keep], r.iscrowd[keep])]
            gt[r.image_id] = {"bb": boxes, "diff": diff, "det": [False] * len(boxes)}
            npos += sum(not d for d in diff)
        mine = [i for i in range(len(dets)) if dets.label[i] == c]
        mine.sort(key=lambda i: -dets.score[i])  # Python's sort is stable, like MATLAB's
        tp, fp = [], []
        off = 1.0 if inclusive else 0.0
        for i in mine:
            bb = [float(v) for v in dets.boxes[i]]
            if inclusive:
                bb = [bb[0] + 1.0, bb[1] + 1.0, bb[2], bb[3]]
            g = gt[dets.image_id[i]]
            ovmax, jmax = -np.inf, -1
            for j, bbgt in enumerate(g["bb"]):
                bi = [max(bb[0], bbgt[0]), max(bb[1], bbgt[1]), min(bb[2], bbgt[2]), min(bb[3], bbgt[3])]
                iw = bi[2] - bi[0] + off
                ih = bi[3] - bi[1] + off
                if iw > 0 and ih > 0:
                    ua = (
                        (bb[2] - bb[0] + off) * (bb[3] - bb[1] + off)
                        + (bbgt[2] - bbgt[0] + off) * (bbgt[3] - bbgt[1] + off)
                        - iw * ih
                    )
                    ov = iw * ih / ua
                    if ov > ovmax:
                        ovmax, jmax = ov, j
            t = f = 0.0
            if ovmax >= thr:
                if g["diff"][jmax]:
                    pass
                elif not g["det"][jmax]:
                    t = 1.0
                    g["det"][jmax] = True
                else:
                    f = 1.0
            else:
                f = 1.0
            tp.append(t)
            fp.append(f)
        if npos == 0:
            aps.append(float("nan"))
            continue
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec = tp / float(npos)
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        if use_07:
            ap = 0.0
            for t in np.arange(0.0, 1.1, 0.1):
                p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
                ap = ap + p / 11.0
        else:
            mrec = np.concatenate(([0.0], rec, [1.0]))
            mpre = np.concatenate(([0.0], prec, [0.0]))
            for k in range(mpre.size - 1, 0, -1):
                mpre[k - 1] = max(mpre[k - 1], mpre[k])
            k = np.where(mrec[1:] != mrec[:-1])[0]
            ap = np.sum((mrec[k + 1] - mrec[k]) * mpre[k + 1])
        aps.append(float(ap))
    return np.array(aps)


def random_case(seed, num_images=30, num_classes=4, integer=False):
    """Clustered boxes so that overlaps near every threshold, duplicates and ties all occur."""
    rng = np.random.default_rng(seed)
    records, ids, labels, scores, boxes = [], [], [], [], []
    for i in range(num_images):
        k = int(rng.integers(0, 6))
        xy = rng.uniform(0, 60, (k, 2))
        wh = rng.uniform(3, 40, (k, 2))
        b = np.concatenate([xy, xy + wh], 1)
        if integer:
            b = np.round(b)
        lab = rng.integers(0, num_classes, k)
        records.append(ImageRecord(f"img{i}", "t", "", 100, 100, b, lab, rng.random(k) < 0.15, rng.random(k) < 0.05))
        n = int(rng.integers(0, 9))
        src = rng.integers(0, max(k, 1), n)
        d = b[src] + rng.normal(0, 4, (n, 4)) if k else rng.uniform(0, 60, (n, 4))
        d = np.concatenate([np.minimum(d[:, :2], d[:, 2:]), np.maximum(d[:, :2], d[:, 2:])], 1)
        if integer:
            d = np.round(d)
        ids += [f"img{i}"] * n
        labels.append(np.where(rng.random(n) < 0.8, lab[src] if k else 0, rng.integers(0, num_classes, n)))
        scores.append(np.round(rng.random(n), 1))  # many ties
        boxes.append(d)
    dets = DetectionTable.from_arrays(ids, np.concatenate(labels), np.concatenate(scores), np.concatenate(boxes))
    return records, dets


# --- published numbers -------------------------------------------------------------------------------


@pytest.mark.parametrize("thr", sorted(PADILLA_ALL))
def test_padilla_sample_reproduces_published_ap(shared_data: Path, thr: float):
    case = shared_data / "metric_cases" / "padilla2018"
    gt = read_ground_truth(case / "groundtruths", box_format="xywh", coords="voc")
    dets = read_detections(case / "detections", gt, box_format="xywh", coords="voc")
    assert gt.class_names == ("person",) and len(dets) == 24
    r07 = voc_evaluate(gt.records, dets, gt.class_names, iou_threshold=thr, use_07_metric=True)
    r12 = voc_evaluate(gt.records, dets, gt.class_names, iou_threshold=thr, use_07_metric=False)
    assert r07.ap[0] == pytest.approx(PADILLA_11PT[thr], abs=1e-10)
    assert r12.ap[0] == pytest.approx(PADILLA_ALL[thr], abs=1e-10)
    assert r12.npos[0] == 15


def test_padilla_numbers_need_the_inclusive_pixel_reading(shared_data: Path):
    """Read as continuous coordinates (no +1 pixel) the sample gives other APs: the published ones
    come from VOC-style inclusive pixels, which our default 'voc' reading reproduces."""
    case = shared_data / "metric_cases" / "padilla2018"
    gt = read_ground_truth(case / "groundtruths", box_format="xywh", coords="continuous")
    dets = read_detections(case / "detections", gt, box_format="xywh", coords="continuous")
    r12 = voc_evaluate(gt.records, dets, gt.class_names, iou_threshold=0.3)
    assert abs(r12.ap[0] - PADILLA_ALL[0.3]) > 1e-3


@pytest.mark.parametrize("thr", [0.5, 0.75])
def test_toy_cat_reproduces_published_ap(shared_data: Path, thr: float):
    case = shared_data / "metric_cases" / "toy_cat"
    gt = read_ground_truth(case)  # VOC root: 10 XML + 2 images without XML
    dets = read_detections(case / "detections", gt, box_format="xyxy", coords="voc")
    assert len(gt.records) == 12 and gt.class_names == ("cat",) and len(dets) == 12
    assert sum(r.num_boxes == 0 for r in gt.records) == 3
    r07 = voc_evaluate(gt.records, dets, gt.class_names, iou_threshold=thr, use_07_metric=True)
    r12 = voc_evaluate(gt.records, dets, gt.class_names, iou_threshold=thr, use_07_metric=False)
    assert round(r07.ap[0], 4) == TOY_CAT[thr][0]
    assert round(r12.ap[0], 4) == TOY_CAT[thr][1]


# --- the devkit's rules, one at a time ------------------------------------------------------------------


def one_image(boxes, labels=None, difficult=None, image_id="a"):
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    n = len(boxes)
    return ImageRecord(
        image_id, "t", "", 100, 100, boxes,
        np.zeros(n, int) if labels is None else labels,
        np.zeros(n, bool) if difficult is None else difficult,
        np.zeros(n, bool),
    )  # fmt: skip


def match(records, dets, thr=0.5):
    gt = GroundTruthArrays.from_records(records)
    index = {r.image_id: i for i, r in enumerate(records)}
    img = np.array([index[i] for i in dets.image_id], np.int64)
    return match_detections(gt, img, dets.label, dets.score, dets.boxes, 1, thr, "continuous")


def test_best_box_taken_is_a_false_positive_without_fallback():
    # gt0 = [0,0,10,10], gt1 = [4,0,14,10]; det b overlaps gt0 most (0.667 vs 0.538) but gt0 is taken by det a.
    records = [one_image([[0, 0, 10, 10], [4, 0, 14, 10]])]
    dets = DetectionTable.from_arrays(["a", "a"], [0, 0], [0.9, 0.8], [[0, 0, 10, 10], [2, 0, 12, 10]])
    m = match(records, dets)
    assert m.tp.tolist() == [True, False] and m.fp.tolist() == [False, True]
    assert m.gt.tolist() == [0, 0]
    assert m.iou[1] == pytest.approx(8 * 10 / (2 * 100 - 80))


def test_equal_scores_keep_input_order():
    records = [one_image([[0, 0, 10, 10]])]
    boxes = [[0, 0, 10, 12], [0, 0, 10, 10]]  # the second overlaps better
    first = match(records, DetectionTable.from_arrays(["a", "a"], [0, 0], [0.5, 0.5], boxes))
    assert first.tp.tolist() == [True, False]
    second = match(records, DetectionTable.from_arrays(["a", "a"], [0, 0], [0.5, 0.5], boxes[::-1]))
    assert second.tp.tolist() == [True, False]


def test_difficult_match_is_neither_tp_nor_fp_and_not_counted():
    records = [one_image([[0, 0, 10, 10], [50, 50, 60, 60]], difficult=np.array([True, False]))]
    dets = DetectionTable.from_arrays(
        ["a", "a", "a"], [0, 0, 0], [0.9, 0.8, 0.7], [[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]]
    )
    m = match(records, dets)
    assert m.ignored.tolist() == [True, True, False]
    assert m.tp.tolist() == [False, False, True] and not m.fp.any()
    r = voc_evaluate(records, dets, ["x"])
    assert r.npos[0] == 1 and r.ap[0] == 1.0
    assert r.true_positives[0] == 1 and r.false_positives[0] == 0


def test_threshold_is_inclusive():
    records = [one_image([[0, 0, 10, 10]])]
    dets = DetectionTable.from_arrays(["a"], [0], [1.0], [[0, 0, 10, 20]])  # IoU exactly 0.5
    assert match(records, dets, thr=0.5).tp.tolist() == [True]
    assert not match(records, dets, thr=0.5000001).tp.any()


def test_ground_truth_as_detections_gives_ap_one(shared_data: Path):
    records, _ = read_voc(shared_data / "voc100", "test", check_images=False)
    assert sum(r.difficult.sum() for r in records) > 0
    ids = [r.image_id for r in records for _ in range(r.num_boxes)]
    labels = np.concatenate([r.labels for r in records])
    boxes = np.concatenate([r.boxes for r in records])
    dets = DetectionTable.from_arrays(ids, labels, np.linspace(1, 0.5, len(ids)), boxes)
    for use_07 in (True, False):
        for conv in ("voc", "continuous"):
            r = voc_evaluate(records, dets, VOC_CLASSES, use_07_metric=use_07, pixel_convention=conv)
            has_gt = r.npos > 0
            assert has_gt.sum() == 20
            np.testing.assert_allclose(r.ap[has_gt], 1.0, rtol=0, atol=1e-12)  # 11 x (1/11) rounds to 1 + 2e-16
            assert r.mAP == pytest.approx(1.0, abs=1e-12)


def test_false_positives_on_an_image_without_ground_truth_lower_precision():
    records = [one_image([[0, 0, 10, 10]], image_id="a"), one_image([], image_id="empty")]
    tp = (["a"], [0], [0.9], [[0, 0, 10, 10]])
    alone = voc_evaluate(records, DetectionTable.from_arrays(*tp), ["x"])
    assert alone.ap[0] == 1.0
    above = DetectionTable.from_arrays(["empty", "a"], [0, 0], [0.95, 0.9], [[5, 5, 20, 20], [0, 0, 10, 10]])
    r = voc_evaluate(records, above, ["x"])
    assert r.ap[0] == pytest.approx(0.5) and r.false_positives[0] == 1
    np.testing.assert_allclose(r.precision[0], [0.0, 0.5])
    below = DetectionTable.from_arrays(["a", "empty"], [0, 0], [0.9, 0.5], [[0, 0, 10, 10], [5, 5, 20, 20]])
    assert voc_evaluate(records, below, ["x"]).ap[0] == 1.0  # an FP after full recall costs nothing


def test_class_without_ground_truth_is_nan_and_left_out_of_map():
    records = [one_image([[0, 0, 10, 10]])]
    dets = DetectionTable.from_arrays(["a", "a"], [0, 1], [0.9, 0.8], [[0, 0, 10, 10], [0, 0, 10, 10]])
    r = voc_evaluate(records, dets, ["x", "y"])
    assert r.ap[0] == 1.0 and np.isnan(r.ap[1]) and r.mAP == 1.0
    assert r.to_dict()["per_class"][1]["ap"] is None


def test_unknown_image_or_class_is_a_clear_error():
    records = [one_image([[0, 0, 10, 10]])]
    with pytest.raises(DatasetError, match="nope"):
        voc_evaluate(records, DetectionTable.from_arrays(["nope"], [0], [0.9], [[0, 0, 1, 1]]), ["x"])
    with pytest.raises(DatasetError, match=r"label\(s\) \[3\]"):
        voc_evaluate(records, DetectionTable.from_arrays(["a"], [3], [0.9], [[0, 0, 1, 1]]), ["x"])
    with pytest.raises(DatasetError, match="x2 < x1"):
        voc_evaluate(records, DetectionTable.from_arrays(["a"], [0], [0.9], [[5, 0, 1, 1]]), ["x"])
    with pytest.raises(ConfigError):
        voc_evaluate(records, DetectionTable.from_arrays(["a"], [0], [0.9], [[0, 0, 1, 1]]), ["x"], iou_threshold=0)


def test_voc_ap_by_hand():
    # one class, 3 gts: TP, FP, TP -> rec 1/3, 1/3, 2/3; prec 1, 1/2, 2/3
    rec = np.array([1, 1, 2]) / 3
    prec = np.array([1, 1 / 2, 2 / 3])
    assert voc_ap(rec, prec) == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3)
    # 11-point: t = 0..0.3 -> 1; t = 0.4..0.6 -> 2/3; t >= 0.7 -> 0
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx((4 * 1 + 3 * 2 / 3) / 11)
    assert voc_ap(np.array([]), np.array([])) == 0.0


# --- random cases against the loop reference ------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_random_cases_agree_with_the_devkit_loop(seed: int):
    records, dets = random_case(seed, integer=seed % 2 == 0)
    for thr in (0.3, 0.5, 0.7):
        for use_07 in (True, False):
            for conv in ("voc", "continuous"):
                ours = voc_evaluate(records, dets, ["a", "b", "c", "d"], thr, use_07, conv).ap
                ref = devkit_ap(records, dets, 4, thr, use_07, inclusive=conv == "voc")
                np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12, equal_nan=True)


def test_both_pixel_conventions_agree_on_records():
    """(x1 + 1, ..., +1 arithmetic) equals the continuous IoU for 0-based continuous boxes."""
    records, dets = random_case(11, num_images=60)
    a = voc_evaluate(records, dets, ["a", "b", "c", "d"], pixel_convention="voc")
    b = voc_evaluate(records, dets, ["a", "b", "c", "d"], pixel_convention="continuous")
    np.testing.assert_allclose(a.ap, b.ap, atol=1e-12, equal_nan=True)


def test_large_case_is_fast():
    """No Python loop per detection: 100k detections in well under a few seconds."""
    import time

    rng = np.random.default_rng(0)
    records = []
    for i in range(2000):
        xy = rng.uniform(0, 300, (5, 2))
        records.append(one_image(np.concatenate([xy, xy + 40], 1), rng.integers(0, 20, 5), image_id=str(i)))
    n = 100_000
    src = rng.integers(0, 2000, n)
    xy = rng.uniform(0, 300, (n, 2))
    dets = DetectionTable.from_arrays(
        [str(s) for s in src], rng.integers(0, 20, n), rng.random(n), np.concatenate([xy, xy + 40], 1)
    )
    started = time.perf_counter()
    r = voc_evaluate(records, dets, [str(c) for c in range(20)])
    assert time.perf_counter() - started < 5.0
    assert r.num_detections.sum() == n


def test_pair_iou_is_the_diagonal_of_the_matrix_iou():
    """boxes.box_iou_pairs_np against box_iou_np (same arithmetic) and torchvision (offset 0)."""
    import torch
    from torchvision.ops import box_iou

    from yolov2.boxes import box_iou_np, box_iou_pairs_np

    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 50, (40, 2))
    a = np.concatenate([xy, xy + rng.uniform(1, 30, (40, 2))], 1)
    b = a[rng.permutation(40)] + rng.normal(0, 5, (40, 4))
    b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 1)
    for offset in (0.0, 1.0):
        np.testing.assert_array_equal(box_iou_pairs_np(a, b, offset), np.diag(box_iou_np(a, b, offset)))
    ref = torch.diag(box_iou(torch.from_numpy(a), torch.from_numpy(b))).numpy()
    np.testing.assert_allclose(box_iou_pairs_np(a, b), ref, rtol=1e-12, atol=1e-15)
