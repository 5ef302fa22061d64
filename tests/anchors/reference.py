"""Independent references for the tests of yolov2/anchors/: plain Python loops and xml.etree.

IoU of centred boxes, first-max argmax, k-means++ draws and Lloyd with the farthest-box re-seeding
rule are written here with plain loops, and the VOC XML is read with xml.etree, independently of
the project's readers. Imported by the tests as ``anchors.reference`` (``tests`` is on the path).
"""

from __future__ import annotations

import statistics
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from yolov2 import anchors as A
from yolov2.data.records import ImageRecord


def read_voc_xml(folder: Path) -> list[dict]:
    """Every VOC XML of a folder: size and boxes with VOC's 1-based inclusive pixel coordinates."""
    images = []
    for path in sorted(folder.glob("*.xml")):
        root = ET.parse(path).getroot()
        width = int(root.find("size/width").text)
        height = int(root.find("size/height").text)
        objects = []
        for obj in root.findall("object"):
            box = obj.find("bndbox")
            xmin, ymin, xmax, ymax = (float(box.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax"))
            difficult = obj.find("difficult")
            objects.append((xmin, ymin, xmax, ymax, difficult is not None and difficult.text.strip() == "1"))
        images.append({"id": path.stem, "width": width, "height": height, "objects": objects})
    return images


def voc_records(images: list[dict]) -> list[ImageRecord]:
    """Records with the project's convention: 0-based continuous xyxy (x1 = xmin - 1, x2 = xmax)."""
    return [
        ImageRecord(
            image_id=im["id"],
            split="train",
            path=f"{im['id']}.jpg",
            width=im["width"],
            height=im["height"],
            boxes=[(o[0] - 1, o[1] - 1, o[2], o[3]) for o in im["objects"]],
            labels=[0] * len(im["objects"]),
            difficult=[o[4] for o in im["objects"]],
            iscrowd=[False] * len(im["objects"]),
        )
        for im in images
    ]


def lognormal_wh(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.multivariate_normal([-2.2, -2.0], [[1.0, 0.7], [0.7, 1.0]], size=n)
    return np.clip(np.exp(z), 1 / 640, 1.0)


def tie_heavy_wh(n: int, seed: int) -> np.ndarray:
    """Shapes on a coarse grid: many exact IoU ties between grid centroids (first max must win)."""
    rng = np.random.default_rng(seed)
    return rng.integers(1, 9, size=(n, 2)) / 8.0


def ref_iou(b: tuple[float, float], c: tuple[float, float]) -> float:
    inter = min(b[0], c[0]) * min(b[1], c[1])
    return inter / (b[0] * b[1] + c[0] * c[1] - inter)


def ref_best(b, cents) -> tuple[int, float]:
    best_j, best_v = 0, ref_iou(b, cents[0])
    for j in range(1, len(cents)):
        v = ref_iou(b, cents[j])
        if v > best_v:
            best_j, best_v = j, v
    return best_j, best_v


def ref_kmeanspp(boxes: list, k: int, rng: np.random.Generator) -> list:
    """k-means++ with d = 1 - IoU, P ∝ d²: first box uniform, then a running-sum draw."""
    first = int(rng.integers(len(boxes)))
    cents = [boxes[first]]
    best = [ref_iou(b, cents[0]) for b in boxes]
    for _ in range(1, k):
        running, cum = 0.0, []
        for v in best:
            d = 1.0 - v
            running += d * d
            cum.append(running)
        r = rng.random() * running
        chosen = next(i for i, c in enumerate(cum) if c > r)
        cents.append(boxes[chosen])
        best = [max(v, ref_iou(b, boxes[chosen])) for v, b in zip(best, boxes)]
    return cents


def ref_lloyd(boxes: list, cents: list, max_iter: int = 300, update: str = "mean"):
    """Lloyd with 1 - IoU: returns (anchors sorted by area, iterations, history of mean IoU)."""
    k = len(cents)
    prev = None
    history = []
    it = 0
    for it in range(1, max_iter + 1):
        assign, ious = [], []
        for b in boxes:
            j, v = ref_best(b, cents)
            assign.append(j)
            ious.append(v)
        history.append(sum(ious) / len(ious))
        members = [[b for b, a in zip(boxes, assign) if a == j] for j in range(k)]
        if prev is not None and assign == prev and all(members):
            break
        if it == max_iter:
            break
        prev = assign
        empty = [j for j in range(k) if not members[j]]
        far = []
        if empty:  # farthest distinct shapes first, lowest index on ties, never one equal to a centroid
            order = sorted(range(len(boxes)), key=lambda i: (ious[i], i))
            for i in order:
                if ious[i] < 1.0 and boxes[i] not in far:
                    far.append(boxes[i])
        new = []
        for j in range(k):
            if members[j]:
                if update == "mean":
                    new.append(
                        (
                            sum(m[0] for m in members[j]) / len(members[j]),
                            sum(m[1] for m in members[j]) / len(members[j]),
                        )
                    )
                else:
                    new.append(
                        (statistics.median(m[0] for m in members[j]), statistics.median(m[1] for m in members[j]))
                    )
            else:
                new.append(far.pop(0))
        cents = new
    anchors = sorted(cents, key=lambda c: (c[0] * c[1], c[0]))
    return np.array(anchors), it, history


def as_tuples(wh: np.ndarray) -> list[tuple[float, float]]:
    return [(float(w), float(h)) for w, h in wh]


def assert_same_result(a: A.AnchorResult, b: A.AnchorResult) -> None:
    np.testing.assert_array_equal(a.anchors, b.anchors)
    assert a.mean_iou == b.mean_iou
    assert a.history == b.history
    assert a.iterations == b.iterations
    np.testing.assert_array_equal(a.counts, b.counts)
    assert a.restart == b.restart
