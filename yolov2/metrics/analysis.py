"""Looking behind the mAP: precision-recall curves, a confusion matrix, and an error breakdown.

All three are plain data (NumPy arrays, dataclasses, JSON-able dicts); ``figures.py`` draws them.
Boxes are compared with the continuous IoU (equal to the devkit's for records, see ``voc.py``).

Error breakdown (the categories of TIDE, Bolya et al., ECCV 2020; counts only, not TIDE's dAP).
Detections are first matched with the VOC devkit's rules at ``iou_fg`` (``voc.match_detections``);
then each false positive gets the first category that applies, in TIDE's order, where ``iou_same``
/ ``iou_other`` are its best IoU with a box of its own / another class in its image:

1. ``localization``: ``iou_bg <= iou_same < iou_fg`` (right class, poor box);
2. ``classification``: ``iou_other >= iou_fg`` (good box, wrong class);
3. ``duplicate``: ``iou_same >= iou_fg`` (its box was already taken by a higher-scoring detection);
4. ``background``: both below ``iou_bg`` (nothing there);
5. ``both``: the rest (wrong class and poor box, ``iou_bg <= iou_other < iou_fg``).

``missed`` counts the non-difficult ground truth boxes that no detection matched and that are not the
target of a localization or classification error. Detections matched to difficult boxes are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from yolov2.data.records import ImageRecord
from yolov2.metrics.coco import IOU_THRESHOLDS, RECALL_THRESHOLDS, CocoResult
from yolov2.metrics.detections import DetectionTable, GroundTruthArrays, resolve_detections
from yolov2.metrics.voc import VocResult, match_detections, pair_iou, same_key_pairs, segment_best

ERROR_TYPES: tuple[str, ...] = ("localization", "classification", "duplicate", "background", "both", "missed")


@dataclass(frozen=True)
class PrCurve:
    """One class's precision-recall curve.

    recall, precision (float64[N]) at each detection in score order (VOC) or at COCO's 101 recall
    thresholds; envelope (float64[N]): the interpolated precision (max precision at any recall >= r);
    scores (float64[N]): the score at each point (NaN where undefined); ap: the class's AP.
    """

    class_name: str
    recall: np.ndarray
    precision: np.ndarray
    envelope: np.ndarray
    scores: np.ndarray
    ap: float


def voc_pr_curves(result: VocResult) -> list[PrCurve]:
    """The curves behind a VOC result, one per class (empty arrays for a class without detections)."""
    curves = []
    for c, name in enumerate(result.class_names):
        prec = result.precision[c]
        envelope = np.maximum.accumulate(prec[::-1])[::-1] if len(prec) else prec
        curves.append(PrCurve(name, result.recall[c], prec, envelope, result.scores[c], float(result.ap[c])))
    return curves


def coco_pr_curves(result: CocoResult, iou_threshold: float = 0.5) -> list[PrCurve]:
    """pycocotools' interpolated precision at its 101 recall thresholds (area "all", 100 detections).

    A class without ground truth gets empty arrays; points pycocotools marks absent (-1) are NaN.
    """
    t = int(np.where(np.isclose(IOU_THRESHOLDS, iou_threshold))[0][0])
    curves = []
    for c, name in enumerate(result.class_names):
        p = result.precision[t, :, c, 0, -1]
        if (p < 0).all():
            empty = np.zeros(0)
            curves.append(PrCurve(name, empty, empty, empty, empty, float("nan")))
            continue
        p = np.where(p < 0, np.nan, p)
        ap = float(np.nanmean(p))
        curves.append(PrCurve(name, RECALL_THRESHOLDS.copy(), p, p, np.full(len(p), np.nan), ap))
    return curves


def confusion_matrix(
    records: Sequence[ImageRecord],
    detections: DetectionTable,
    num_classes: int,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.25,
) -> np.ndarray:
    """Detection confusion matrix (int64[C + 1, C + 1]): ``matrix[predicted, true]``, index C = background.

    Per image, detections with ``score >= score_threshold`` and ground-truth boxes are paired one to
    one regardless of class, greedily by decreasing IoU (ties: better score first) among pairs with
    IoU >= ``iou_threshold``. A pair counts at ``[pred, true]``; an unpaired detection at ``[pred, C]``
    (a false alarm on background); an unpaired box at ``[C, true]`` (missed). Pairs with a difficult
    or crowd box, and such boxes left unpaired, are not counted.
    """
    gt = GroundTruthArrays.from_records(records)
    det_image = resolve_detections(detections, records, num_classes)
    keep = detections.score >= score_threshold
    det_index = np.flatnonzero(keep)
    det_of_pair, gt_of_pair, _ = same_key_pairs(gt.image, det_image[keep])
    iou = pair_iou(detections.boxes[keep], gt.boxes, det_of_pair, gt_of_pair, "continuous")
    good = iou >= iou_threshold
    det_of_pair, gt_of_pair, iou = det_of_pair[good], gt_of_pair[good], iou[good]
    order = np.lexsort((-detections.score[keep][det_of_pair], -iou))  # by IoU, then score
    det_used = np.zeros(len(det_index), bool)
    gt_used = np.zeros(len(gt.label), bool)
    pairs = []
    for d, g in zip(det_of_pair[order].tolist(), gt_of_pair[order].tolist()):  # greedy: one pass over candidate pairs
        if not det_used[d] and not gt_used[g]:
            det_used[d] = gt_used[g] = True
            pairs.append((d, g))
    matrix = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    ignore = gt.difficult | gt.iscrowd
    pred_label = detections.label[keep]
    if pairs:
        d, g = np.array(pairs).T
        counted = ~ignore[g]
        np.add.at(matrix, (pred_label[d[counted]], gt.label[g[counted]]), 1)
    # numpy's stubs reject an index tuple that mixes an array and an int; numpy accepts it (broadcast)
    np.add.at(matrix, (pred_label[~det_used], num_classes), 1)  # type: ignore[arg-type]
    missed = ~gt_used & ~ignore
    np.add.at(matrix, (num_classes, gt.label[missed]), 1)
    return matrix


@dataclass(frozen=True)
class ErrorBreakdown:
    """Counts per error type (:data:`ERROR_TYPES`) and the per-detection category.

    counts: {type: int}, plus ``true_positives``; per_class: {type: int64[C]} (by the detection's
    class, or the box's class for ``missed``); category (object[N]): "tp", "ignored" or an error
    type for every detection, in input order.
    """

    counts: dict[str, int]
    per_class: dict[str, np.ndarray]
    category: np.ndarray
    iou_fg: float
    iou_bg: float

    def to_dict(self, class_names: Sequence[str]) -> dict:
        return {
            "iou_fg": self.iou_fg,
            "iou_bg": self.iou_bg,
            "counts": dict(self.counts),
            "per_class": {t: dict(zip(class_names, v.tolist())) for t, v in self.per_class.items()},
        }


def error_breakdown(
    records: Sequence[ImageRecord],
    detections: DetectionTable,
    num_classes: int,
    iou_fg: float = 0.5,
    iou_bg: float = 0.1,
) -> ErrorBreakdown:
    """TIDE-style categories of every false positive and of the missed boxes (module docstring)."""
    gt = GroundTruthArrays.from_records(records)
    det_image = resolve_detections(detections, records, num_classes)
    m = match_detections(
        gt, det_image, detections.label, detections.score, detections.boxes, num_classes, iou_fg, "continuous"
    )
    det_of_pair, gt_of_pair, count = same_key_pairs(gt.image, det_image)  # every box of the detection's image
    iou = pair_iou(detections.boxes, gt.boxes, det_of_pair, gt_of_pair, "continuous")
    same = detections.label[det_of_pair] == gt.label[gt_of_pair]
    iou_same, target_same = segment_best(np.where(same, iou, -np.inf), count, gt_of_pair)
    iou_other, target_other = segment_best(np.where(same, -np.inf, iou), count, gt_of_pair)

    category = np.full(len(detections), "", dtype=object)
    category[m.tp] = "tp"
    category[m.ignored] = "ignored"
    open_ = m.fp.copy()
    rules = [
        ("localization", (iou_same >= iou_bg) & (iou_same < iou_fg)),
        ("classification", iou_other >= iou_fg),
        ("duplicate", iou_same >= iou_fg),
        ("background", np.maximum(iou_same, iou_other) < iou_bg),
        ("both", np.ones(len(detections), bool)),
    ]
    for name, rule in rules:
        hit = open_ & rule
        category[hit] = name
        open_ &= ~hit

    ignore = gt.difficult | gt.iscrowd
    explained = np.zeros(len(gt.label), bool)
    explained[target_same[category == "localization"]] = True
    explained[target_other[category == "classification"]] = True
    matched = np.zeros(len(gt.label), bool)
    matched[m.gt[m.tp]] = True
    missed = ~matched & ~ignore & ~explained

    per_class = {t: np.bincount(detections.label[category == t], minlength=num_classes) for t in ERROR_TYPES[:-1]}
    per_class["missed"] = np.bincount(gt.label[missed], minlength=num_classes)
    counts = {t: int(v.sum()) for t, v in per_class.items()}
    counts["true_positives"] = int(m.tp.sum())
    return ErrorBreakdown(counts, per_class, category, float(iou_fg), float(iou_bg))
