"""Object crops cut from detection boxes: labelled object images for pretraining the backbone as a classifier.

Why: YOLOv2's recipe trains Darknet-19 as a classifier before the detector. Without ImageNet at hand, the
detection dataset's own boxes give labelled object images of exactly the detector's classes. The crop
rectangles are computed from the records alone (no pixels), so a stage can plan, count and reject crops from
the shard index before decoding anything; :func:`cut_crop` then cuts one out of the decoded image.

Coordinates: boxes are the records' convention, **absolute pixels, 0-based continuous xyxy**. A crop is an
integer pixel rectangle ``[x1, x2) x [y1, y2)`` inside ``[0, W] x [0, H]``: the box grown on each side by
``margin`` times its own width (left, right) or height (top, bottom) for context, rounded outward to whole
pixels (every pixel the grown box touches), then clipped to the image.

Counting: every box becomes exactly one crop or one reject with a reason (difficult, crowd, degenerate,
outside the image, smaller than the minimum side after clipping), so ``boxes in == crops + rejects``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from yolov2.data.records import ImageRecord, Reject
from yolov2.errors import ConfigError

__all__ = [
    "CropSettings",
    "ObjectCrop",
    "CropReject",
    "crop_rectangle",
    "object_crops",
    "record_crops",
    "cut_crop",
]

# Rounding outward must not take a float's last bit for a whole pixel: 10.0 computed as 10.000000000000002
# would otherwise add an eleventh column. Far below any real coordinate's precision.
_SNAP = 1e-6

DIFFICULT = "difficult box (VOC 'difficult' flag; set keep_difficult to crop it)"
CROWD = "crowd box (COCO 'iscrowd': a region of many objects; set keep_crowd to crop it)"
DEGENERATE = "degenerate box: a coordinate is not finite, or x2 <= x1 or y2 <= y1"
OUTSIDE = "box entirely outside the image"
TOO_SMALL = "smaller than min side after clipping"


@dataclass(frozen=True)
class CropSettings:
    """How boxes become crops: ``margin`` (fraction of the box side added on each side for context),
    ``min_side`` (pixels; a smaller crop, after clipping, is rejected: too few pixels to learn a class from),
    and whether difficult and crowd boxes are cropped (by default not: they are left out of training too)."""

    margin: float = 0.15
    min_side: int = 16
    keep_difficult: bool = False
    keep_crowd: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise ConfigError(f"crop margin must be a finite number >= 0, got {self.margin}")
        if self.min_side < 1:
            raise ConfigError(f"crop min_side must be >= 1 pixel, got {self.min_side}")


@dataclass(frozen=True)
class ObjectCrop:
    """One crop: integer pixels ``[x1, x2) x [y1, y2)`` of its image, the class ``label``, and which box
    (its index in the record's boxes) it was cut for."""

    box_index: int
    label: int
    x1: int
    y1: int
    x2: int
    y2: int

    @property
    def width(self) -> int:
        return self.x2 - self.x1

    @property
    def height(self) -> int:
        return self.y2 - self.y1


@dataclass(frozen=True)
class CropReject:
    """A box that gave no crop, and why."""

    box_index: int
    label: int
    reason: str


def crop_rectangle(
    width: int, height: int, box: Sequence[float], margin: float, min_side: int
) -> tuple[int, int, int, int] | str:
    """The crop of one box (x1, y1, x2, y2: absolute pixels, 0-based continuous xyxy) in a ``width x height``
    image: integer ``(x1, y1, x2, y2)`` within ``[0, width] x [0, height]``, or why there is none."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
        return DEGENERATE
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        return OUTSIDE
    pad_x, pad_y = margin * (x2 - x1), margin * (y2 - y1)
    left = max(math.floor(x1 - pad_x + _SNAP), 0)
    top = max(math.floor(y1 - pad_y + _SNAP), 0)
    right = min(math.ceil(x2 + pad_x - _SNAP), width)
    bottom = min(math.ceil(y2 + pad_y - _SNAP), height)
    if right - left < min_side or bottom - top < min_side:
        size = f"{max(right - left, 0)}x{max(bottom - top, 0)}"
        return f"{TOO_SMALL}: {size} pixels (WxH), min side {min_side}"
    return left, top, right, bottom


def object_crops(
    width: int,
    height: int,
    boxes: np.ndarray,
    labels: np.ndarray,
    difficult: np.ndarray | None = None,
    iscrowd: np.ndarray | None = None,
    settings: CropSettings | None = None,
) -> tuple[list[ObjectCrop], list[CropReject]]:
    """Crops of an image's boxes: ``(crops, rejects)``, one or the other per box, in box order.

    width, height: the image size in pixels; boxes (float[N, 4]) absolute pixel xyxy, 0-based continuous;
    labels (int[N]) class indices; difficult, iscrowd (bool[N], default all False): the records' flags;
    settings: default :class:`CropSettings` ().
    """
    settings = settings or CropSettings()
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    n = len(boxes)
    flags = [np.zeros(n, bool) if f is None else np.asarray(f, bool).reshape(n) for f in (difficult, iscrowd)]
    crops: list[ObjectCrop] = []
    rejects: list[CropReject] = []
    rows = zip(boxes.tolist(), np.asarray(labels).reshape(n).tolist(), flags[0].tolist(), flags[1].tolist())
    for index, (box, label, is_difficult, is_crowd) in enumerate(rows):
        result = crop_rectangle(width, height, box, settings.margin, settings.min_side)
        if result == DEGENERATE:
            reason: str | None = DEGENERATE
        elif is_difficult and not settings.keep_difficult:
            reason = DIFFICULT
        elif is_crowd and not settings.keep_crowd:
            reason = CROWD
        else:
            reason = result if isinstance(result, str) else None
        if reason is not None:
            rejects.append(CropReject(index, int(label), reason))
        else:
            assert not isinstance(result, str)  # no reason: crop_rectangle gave a rectangle
            crops.append(ObjectCrop(index, int(label), *result))
    return crops, rejects


def record_crops(record: ImageRecord, settings: CropSettings | None = None) -> tuple[list[ObjectCrop], list[Reject]]:
    """:func:`object_crops` of a record (from a reader or the shard index), with box-level :class:`Reject` s
    naming the image file, the box and its class: ``record.num_boxes == len(crops) + len(rejects)``."""
    crops, dropped = object_crops(
        record.width, record.height, record.boxes, record.labels, record.difficult, record.iscrowd, settings
    )
    rejects = [
        Reject(record.path, f"box {r.box_index} (label {r.label}): {r.reason}", "box", record.image_id, record.split)
        for r in dropped
    ]
    return crops, rejects


def cut_crop(image: np.ndarray, crop: ObjectCrop) -> np.ndarray:
    """The pixels of ``crop`` from ``image`` (uint8[H, W, C] of the record the crop was computed from), as a
    C-contiguous copy: OpenCV, which the classifier transforms run on, wants contiguous input, and the copy
    lets the decoded image go. A crop reaching past the image (a record of another size) is a ValueError."""
    h, w = image.shape[:2]
    if not (0 <= crop.x1 < crop.x2 <= w and 0 <= crop.y1 < crop.y2 <= h):
        raise ValueError(
            f"crop [{crop.x1}, {crop.x2}) x [{crop.y1}, {crop.y2}) of box {crop.box_index} does not fit the "
            f"{w}x{h} image: was it computed from another image's record?"
        )
    return np.ascontiguousarray(image[crop.y1 : crop.y2, crop.x1 : crop.x2])
