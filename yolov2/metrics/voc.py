"""Pascal VOC average precision, with the devkit's rules, vectorised over the whole dataset.

The rules (VOCdevkit ``VOCevaldet.m`` and its Python port ``voc_eval.py``), per class:

1. Detections are sorted by decreasing score over the whole dataset, with a *stable* sort (ties keep
   their input order, as MATLAB's ``sort`` does).
2. Each detection takes the ground truth of its class in its image with the highest overlap
   (``ovmax`` over *all* of them, matched or not; the first one on ties) and then:
   ``ovmax >= iou_threshold`` and that box is ``difficult`` -> ignored (neither TP nor FP);
   ``ovmax >= iou_threshold`` and not yet detected -> TP (and it becomes detected);
   otherwise -> FP (a duplicate, a poor overlap, or no ground truth at all).
   The devkit does not fall back to the second-best box when the best one is taken.
3. ``npos`` counts the non-difficult boxes; recall = TP / npos, precision = TP / max(TP + FP, eps).
4. AP: VOC2007's 11-point interpolation (``use_07_metric``) or VOC2010+'s area under the monotone
   precision envelope at every recall change. mAP is the mean over classes that have ground truth.

Because a detection's box is fixed by rule 2 regardless of what was matched before, the sequential
loop reduces to "the first detection (in score order) that claims a box wins it", which is what
:func:`match_detections` computes with sorts and segment reductions, with no Python loop over
detections. ``iscrowd`` boxes (COCO) are treated like ``difficult`` ones.

Pixel convention. The devkit works on 1-based *inclusive* pixel indices and adds 1 to every width
and height. Records are 0-based continuous (``x1 = xmin - 1, x2 = xmax``), so ``"voc"`` maps every
box back to the devkit's inclusive form ``(x1 + 1, y1 + 1, x2, y2)`` and applies the devkit's ``+1``
arithmetic operation for operation. For boxes in our convention this equals the continuous IoU in
exact arithmetic (``xmax - xmin + 1 == x2 - x1``); keeping the devkit's float operations makes
threshold ties resolve exactly as in the devkit. ``"continuous"`` uses the plain IoU. Where published
numbers depend on the +1, it is in how a *file's* coordinates are read (see ``metrics/formats.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from yolov2.boxes import box_iou_pairs_np
from yolov2.data.records import ImageRecord
from yolov2.errors import ConfigError
from yolov2.metrics.detections import DetectionTable, GroundTruthArrays, resolve_detections

PixelConvention = Literal["voc", "continuous"]
_EPS = np.finfo(np.float64).eps


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False) -> float:
    """The devkit's AP of one class from its cumulative recall/precision (float64[N], score order).

    ``use_07_metric``: mean of the best precision at recall >= t for t in 0, 0.1, ..., 1 (VOC2007).
    Otherwise: area under the precision envelope (max precision at any higher recall), summed where
    recall changes (VOC2010+). Same float operations as the devkit's ``voc_ap``.
    """
    rec = np.asarray(recall, np.float64)
    prec = np.asarray(precision, np.float64)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):  # the devkit's thresholds, float rounding included
            above = rec >= t
            p = np.max(prec[above]) if above.any() else 0.0
            ap = ap + p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


@dataclass(frozen=True)
class VocMatches:
    """Outcome of every detection, in the detections' input row order.

    tp, fp, ignored (bool[N]): exactly one is true per detection (``ignored``: matched a difficult box);
    iou (float64[N]): ``ovmax``, -inf where the image has no box of the detection's class;
    gt (int64[N]): index (into the flattened ground truth) of the best-overlap box, -1 if none;
    order (int64[N]): the stable score order (row indices, best first).
    """

    tp: np.ndarray
    fp: np.ndarray
    ignored: np.ndarray
    iou: np.ndarray
    gt: np.ndarray
    order: np.ndarray


def same_key_pairs(gt_key: np.ndarray, det_key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (detection, ground truth) pair that shares a key, grouped by detection.

    gt_key (int64[G]), det_key (int64[D]) -> ``(det_of_pair, gt_of_pair, count)``: int64[P] indices,
    pairs of one detection contiguous and in ground-truth order, and count (int64[D]) pairs per
    detection. Costs O((G + D) log G + P), with no Python loop.
    """
    gt_order = np.argsort(gt_key, kind="stable")
    sorted_keys = gt_key[gt_order]
    start = np.searchsorted(sorted_keys, det_key, side="left")
    count = np.searchsorted(sorted_keys, det_key, side="right") - start
    det_of_pair = np.repeat(np.arange(len(det_key)), count)
    first_pair = np.cumsum(count) - count
    local = np.arange(len(det_of_pair)) - first_pair[det_of_pair]
    return det_of_pair, gt_order[start[det_of_pair] + local], count


def segment_best(values: np.ndarray, count: np.ndarray, gt_of_pair: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per detection, the max of its pairs' ``values`` and the ground truth of the first pair reaching it.

    values (float64[P]) over the pairs of :func:`same_key_pairs`; returns ``(best float64[D], gt int64[D])``,
    ``-inf`` / ``-1`` for a detection without pairs.
    """
    best = np.full(len(count), -np.inf)
    arg = np.full(len(count), -1, np.int64)
    has = count > 0
    if not has.any():
        return best, arg
    first_pair = (np.cumsum(count) - count)[has]
    best[has] = np.maximum.reduceat(values, first_pair)
    det_of_pair = np.repeat(np.arange(len(count)), count)
    pair_index = np.where(values == best[det_of_pair], np.arange(len(values)), np.iinfo(np.int64).max)
    arg[has] = gt_of_pair[np.minimum.reduceat(pair_index, first_pair)]
    return best, arg


def pair_iou(
    det_boxes: np.ndarray,
    gt_boxes: np.ndarray,
    det_of_pair: np.ndarray,
    gt_of_pair: np.ndarray,
    pixel_convention: PixelConvention = "voc",
) -> np.ndarray:
    """IoU (float64[P]) of each pair, boxes float64 xyxy 0-based continuous, in ``pixel_convention``'s arithmetic."""
    offset = 1.0 if pixel_convention == "voc" else 0.0
    return box_iou_pairs_np(
        _convention_boxes(det_boxes[det_of_pair], pixel_convention),
        _convention_boxes(gt_boxes[gt_of_pair], pixel_convention),
        pixel_offset=offset,
    )  # fmt: skip


def best_overlaps(
    gt_key: np.ndarray,
    gt_boxes: np.ndarray,
    det_key: np.ndarray,
    det_boxes: np.ndarray,
    pixel_convention: PixelConvention = "voc",
) -> tuple[np.ndarray, np.ndarray]:
    """For each detection, the best IoU with the ground truth of the same key, and that box's index.

    gt_key (int64[G]) and det_key (int64[D]) group boxes (here ``image * C + class``); boxes are
    float64 xyxy, 0-based continuous. Returns ``(ovmax float64[D], jmax int64[D])``, ``-inf``/``-1``
    for a detection whose key has no ground truth; ties go to the first box in ground-truth order.
    Every (detection, same-key box) pair is expanded once: the cost is the number of such pairs.
    """
    det_of_pair, gt_of_pair, count = same_key_pairs(gt_key, det_key)
    iou = pair_iou(det_boxes, gt_boxes, det_of_pair, gt_of_pair, pixel_convention)
    return segment_best(iou, count, gt_of_pair)


def match_detections(
    gt: GroundTruthArrays,
    det_image: np.ndarray,
    det_label: np.ndarray,
    det_score: np.ndarray,
    det_boxes: np.ndarray,
    num_classes: int,
    iou_threshold: float = 0.5,
    pixel_convention: PixelConvention = "voc",
) -> VocMatches:
    """The devkit's TP/FP/ignored decision for every detection (rules 1-2 of the module docstring).

    det_image (int64[D]) indexes the records of ``gt``; det_label (int64[D]); det_score (float64[D]);
    det_boxes (float64[D, 4]) xyxy absolute pixels, 0-based continuous.
    """
    _check_threshold(iou_threshold)
    n_det = len(det_score)
    order = np.argsort(-np.asarray(det_score, np.float64), kind="stable")
    ovmax, jmax = best_overlaps(
        gt.image * num_classes + gt.label, gt.boxes, det_image * num_classes + det_label, det_boxes, pixel_convention
    )
    matched = ovmax >= iou_threshold
    ignore_gt = gt.difficult | gt.iscrowd
    ignored = np.zeros(n_det, bool)
    ignored[matched] = ignore_gt[jmax[matched]]
    claims = order[(matched & ~ignored)[order]]  # claiming detections, best score first
    _, first = np.unique(jmax[claims], return_index=True)
    tp = np.zeros(n_det, bool)
    tp[claims[first]] = True
    fp = ~tp & ~ignored
    return VocMatches(tp=tp, fp=fp, ignored=ignored, iou=ovmax, gt=jmax, order=order)


@dataclass(frozen=True)
class VocResult:
    """Per-class VOC AP and the curves behind it.

    ap (float64[C]): NaN for a class without (non-difficult) ground truth; npos, num_detections,
    true_positives, false_positives (int64[C]); precision, recall, scores: per class, float64 arrays
    over that class's detections in score order (the devkit's ``prec``/``rec``).
    """

    class_names: tuple[str, ...]
    ap: np.ndarray
    npos: np.ndarray
    num_detections: np.ndarray
    true_positives: np.ndarray
    false_positives: np.ndarray
    precision: list[np.ndarray] = field(repr=False)
    recall: list[np.ndarray] = field(repr=False)
    scores: list[np.ndarray] = field(repr=False)
    iou_threshold: float = 0.5
    use_07_metric: bool = False
    pixel_convention: PixelConvention = "voc"

    @property
    def mAP(self) -> float:
        """Mean AP over the classes that have ground truth (NaN if none has)."""
        valid = ~np.isnan(self.ap)
        return float(self.ap[valid].mean()) if valid.any() else float("nan")

    def to_dict(self) -> dict:
        """JSON-able summary: metric settings, mAP and one row per class (AP null when undefined)."""
        return {
            "metric": "voc07" if self.use_07_metric else "voc12",
            "iou_threshold": self.iou_threshold,
            "pixel_convention": self.pixel_convention,
            "mAP": _json_float(self.mAP),
            "per_class": [
                {
                    "class": name,
                    "ap": _json_float(self.ap[c]),
                    "npos": int(self.npos[c]),
                    "detections": int(self.num_detections[c]),
                    "tp": int(self.true_positives[c]),
                    "fp": int(self.false_positives[c]),
                }
                for c, name in enumerate(self.class_names)
            ],
        }


def voc_evaluate(
    records: Sequence[ImageRecord],
    detections: DetectionTable,
    class_names: Sequence[str],
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
    pixel_convention: PixelConvention = "voc",
) -> VocResult:
    """VOC AP per class and mAP of ``detections`` against ``records`` (module docstring for the rules).

    Detections on an image that is not in ``records`` or with a label outside ``class_names`` raise
    :class:`~yolov2.errors.DatasetError`. An image without ground truth is allowed: its detections
    are false positives.
    """
    if pixel_convention not in ("voc", "continuous"):
        raise ConfigError(f"pixel_convention must be 'voc' or 'continuous', got {pixel_convention!r}")
    num_classes = len(class_names)
    det_image = resolve_detections(detections, records, num_classes)
    gt = GroundTruthArrays.from_records(records)
    if len(gt.label) and ((gt.label < 0) | (gt.label >= num_classes)).any():
        bad = sorted(set(gt.label[(gt.label < 0) | (gt.label >= num_classes)].tolist()))
        raise ConfigError(f"records hold labels {bad[:5]} outside the {num_classes} class names")
    m = match_detections(
        gt, det_image, detections.label, detections.score, detections.boxes,
        num_classes, iou_threshold, pixel_convention,
    )  # fmt: skip
    npos = np.bincount(gt.label[~(gt.difficult | gt.iscrowd)], minlength=num_classes).astype(np.int64)

    by_class = m.order[np.argsort(detections.label[m.order], kind="stable")]  # class-major, score order within
    bounds = np.searchsorted(detections.label[by_class], np.arange(num_classes + 1))
    ap = np.full(num_classes, np.nan)
    precision, recall, scores = [], [], []
    n_det = np.zeros(num_classes, np.int64)
    n_tp = np.zeros(num_classes, np.int64)
    n_fp = np.zeros(num_classes, np.int64)
    for c in range(num_classes):
        idx = by_class[bounds[c] : bounds[c + 1]]
        tp = np.cumsum(m.tp[idx].astype(np.float64))
        fp = np.cumsum(m.fp[idx].astype(np.float64))
        prec = tp / np.maximum(tp + fp, _EPS)
        rec = tp / float(npos[c]) if npos[c] > 0 else np.full(len(idx), np.nan)
        if npos[c] > 0:
            ap[c] = voc_ap(rec, prec, use_07_metric)
        precision.append(prec)
        recall.append(rec)
        scores.append(detections.score[idx])
        n_det[c] = len(idx)
        n_tp[c] = int(m.tp[idx].sum())
        n_fp[c] = int(m.fp[idx].sum())
    return VocResult(
        class_names=tuple(class_names),
        ap=ap,
        npos=npos,
        num_detections=n_det,
        true_positives=n_tp,
        false_positives=n_fp,
        precision=precision,
        recall=recall,
        scores=scores,
        iou_threshold=float(iou_threshold),
        use_07_metric=bool(use_07_metric),
        pixel_convention=pixel_convention,
    )


def _convention_boxes(boxes: np.ndarray, pixel_convention: PixelConvention) -> np.ndarray:
    """0-based continuous xyxy -> the coordinates the IoU formula of ``pixel_convention`` expects."""
    if pixel_convention == "voc":
        return boxes + np.array([1.0, 1.0, 0.0, 0.0])  # the devkit's 1-based inclusive (xmin, ymin, xmax, ymax)
    return boxes


def _check_threshold(iou_threshold: float) -> None:
    if not 0.0 < float(iou_threshold) <= 1.0:
        raise ConfigError(f"iou_threshold must be in (0, 1], got {iou_threshold}")


def _json_float(x: float) -> float | None:
    return None if np.isnan(x) else float(x)
