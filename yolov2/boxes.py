"""All box arithmetic in one place: formats, IoU, width/height IoU for anchor matching, Darknet's letterbox
geometry, the box side of the training transforms (map through an affine, flip, clip) and the padded truth tensor.

Conventions: ``xyxy`` is (x1, y1, x2, y2), ``cxcywh`` is (centre x, centre y, width, height).
Which unit (pixels, normalised, grid cells) is stated at each call site; these functions don't care.
Torch functions reuse ``torchvision.ops``; the NumPy twins exist for the data and anchor code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, cast

import numpy as np
import torch
from torchvision.ops import box_convert, box_iou

__all__ = [
    "box_iou",
    "xyxy_to_cxcywh",
    "cxcywh_to_xyxy",
    "wh_iou",
    "wh_iou_np",
    "box_iou_np",
    "box_iou_pairs_np",
    "pairwise_box_iou",
    "pairwise_distance_box_iou",
    "efficient_iou_loss",
    "region_boxes",
    "DARKNET_MIN_BOX",
    "map_boxes",
    "flip_boxes",
    "clip_boxes",
    "LetterboxParams",
    "letterbox_geometry",
    "letterbox_params",
    "targets_from_boxes",
]

DARKNET_MIN_BOX = 0.001  # fill_truth_detection drops boxes with w or h < .001 of the input


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """boxes (Tensor[..., 4]) xyxy -> cxcywh."""
    return box_convert(boxes, "xyxy", "cxcywh")


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """boxes (Tensor[..., 4]) cxcywh -> xyxy."""
    return box_convert(boxes, "cxcywh", "xyxy")


def wh_iou(wh1: torch.Tensor, wh2: torch.Tensor) -> torch.Tensor:
    """IoU of boxes given only by shape, both centred at the origin.

    wh1 (Tensor[N, 2]), wh2 (Tensor[M, 2]) -> Tensor[N, M]. This is Darknet's ``bias_match`` IoU and
    the k-means distance ``1 - IoU`` of the anchors paper section.
    """
    inter = torch.minimum(wh1[:, None, 0], wh2[None, :, 0]) * torch.minimum(wh1[:, None, 1], wh2[None, :, 1])
    area1 = (wh1[:, 0] * wh1[:, 1])[:, None]
    area2 = (wh2[:, 0] * wh2[:, 1])[None, :]
    return inter / (area1 + area2 - inter)


def wh_iou_np(wh1: np.ndarray, wh2: np.ndarray) -> np.ndarray:
    """NumPy twin of :func:`wh_iou`: wh1 (float[N, 2]), wh2 (float[M, 2]) -> float[N, M]."""
    inter = np.minimum(wh1[:, None, 0], wh2[None, :, 0]) * np.minimum(wh1[:, None, 1], wh2[None, :, 1])
    area1 = (wh1[:, 0] * wh1[:, 1])[:, None]
    area2 = (wh2[:, 0] * wh2[:, 1])[None, :]
    return inter / (area1 + area2 - inter)


def box_iou_np(boxes1: np.ndarray, boxes2: np.ndarray, pixel_offset: float = 0.0) -> np.ndarray:
    """IoU of xyxy boxes: boxes1 (float[N, 4]), boxes2 (float[M, 4]) -> float[N, M].

    ``pixel_offset=1`` gives the VOC devkit's inclusive-pixel convention (width = x2 - x1 + 1).
    """
    b1 = np.asarray(boxes1, np.float64)
    b2 = np.asarray(boxes2, np.float64)
    iw = np.minimum(b1[:, None, 2], b2[None, :, 2]) - np.maximum(b1[:, None, 0], b2[None, :, 0]) + pixel_offset
    ih = np.minimum(b1[:, None, 3], b2[None, :, 3]) - np.maximum(b1[:, None, 1], b2[None, :, 1]) + pixel_offset
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area1 = ((b1[:, 2] - b1[:, 0] + pixel_offset) * (b1[:, 3] - b1[:, 1] + pixel_offset))[:, None]
    area2 = ((b2[:, 2] - b2[:, 0] + pixel_offset) * (b2[:, 3] - b2[:, 1] + pixel_offset))[None, :]
    return inter / np.maximum(area1 + area2 - inter, np.finfo(np.float64).eps)


def _pairwise_coords(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """x1, y1, x2, y2 of boxes1 as (..., N, 1) and of boxes2 as (..., 1, M), each contiguous.

    Broadcasting single coordinates is several times faster on CPU than broadcasting (..., N, 1, 2) slices.
    """
    first = [c.contiguous().unsqueeze(-1) for c in boxes1.unbind(-1)]
    second = [c.contiguous().unsqueeze(-2) for c in boxes2.unbind(-1)]
    return (*first, *second)


def pairwise_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of every pair, batched: boxes1 (Tensor[..., N, 4]), boxes2 (Tensor[..., M, 4]) xyxy -> Tensor[..., N, M].

    ``torchvision.ops.box_iou`` with batch dimensions (the region loss compares every prediction of an image
    with every truth of the same image, for all images at once). Two degenerate boxes (union 0) give 0.
    """
    ax1, ay1, ax2, ay2, bx1, by1, bx2, by2 = _pairwise_coords(boxes1, boxes2)
    inter = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp_(min=0)
    inter = inter.mul_((torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp_(min=0))
    union = ((ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1)) - inter
    return inter / union.clamp_(min=torch.finfo(union.dtype).tiny)


def pairwise_distance_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """DIoU of every pair, batched: IoU - d^2 / c^2 (d: distance of the centres, c: diagonal of the enclosing box).

    boxes1 (Tensor[..., N, 4]), boxes2 (Tensor[..., M, 4]) xyxy -> Tensor[..., N, M]; the batched twin of
    ``torchvision.ops.distance_box_iou`` (same ``eps`` in the denominator), for DIoU-NMS on padded groups.
    """
    ax1, ay1, ax2, ay2, bx1, by1, bx2, by2 = _pairwise_coords(boxes1, boxes2)
    diag2 = (torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)) ** 2
    diag2 = diag2 + (torch.maximum(ay2, by2) - torch.minimum(ay1, by1)) ** 2 + eps
    dist2 = ((ax1 + ax2) / 2 - (bx1 + bx2) / 2) ** 2 + ((ay1 + ay2) / 2 - (by1 + by2) / 2) ** 2
    return pairwise_box_iou(boxes1, boxes2) - dist2 / diag2


def efficient_iou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """EIoU loss of matched pairs (Zhang et al., "Focal and Efficient IOU Loss", 2021), no reduction.

    boxes1, boxes2 (Tensor[N, 4]) xyxy -> Tensor[N]:
    1 - IoU + d^2/c^2 + (w1 - w2)^2 / cw^2 + (h1 - h2)^2 / ch^2, where cw, ch, c are the width, height and
    diagonal of the smallest enclosing box. torchvision has CIoU and DIoU losses but not this one.
    """
    x1 = torch.maximum(boxes1[..., 0], boxes2[..., 0])
    y1 = torch.maximum(boxes1[..., 1], boxes2[..., 1])
    x2 = torch.minimum(boxes1[..., 2], boxes2[..., 2])
    y2 = torch.minimum(boxes1[..., 3], boxes2[..., 3])
    inter = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    w1 = boxes1[..., 2] - boxes1[..., 0]
    h1 = boxes1[..., 3] - boxes1[..., 1]
    w2 = boxes2[..., 2] - boxes2[..., 0]
    h2 = boxes2[..., 3] - boxes2[..., 1]
    iou = inter / (w1 * h1 + w2 * h2 - inter + eps)
    cw = torch.maximum(boxes1[..., 2], boxes2[..., 2]) - torch.minimum(boxes1[..., 0], boxes2[..., 0])
    ch = torch.maximum(boxes1[..., 3], boxes2[..., 3]) - torch.minimum(boxes1[..., 1], boxes2[..., 1])
    dx = (boxes1[..., 0] + boxes1[..., 2] - boxes2[..., 0] - boxes2[..., 2]) / 2
    dy = (boxes1[..., 1] + boxes1[..., 3] - boxes2[..., 1] - boxes2[..., 3]) / 2
    centre_term = (dx**2 + dy**2) / (cw**2 + ch**2 + eps)
    return 1 - iou + centre_term + (w1 - w2) ** 2 / (cw**2 + eps) + (h1 - h2) ** 2 / (ch**2 + eps)


def region_boxes(raw_xywh: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Darknet's ``get_region_box`` for a whole output map, differentiable.

    raw_xywh (Tensor[B, A, 4, H, W]): the raw (tx, ty, tw, th) channels of each anchor; anchors (Tensor[A, 2])
    (pw, ph) in grid cells. Returns Tensor[B, A, H, W, 4] cxcywh normalised to the network input:
    bx = (i + sigmoid(tx)) / W, by = (j + sigmoid(ty)) / H, bw = pw * exp(tw) / W, bh = ph * exp(th) / H.
    """
    _, num_anchors, _, h, w = raw_xywh.shape
    dtype, device = raw_xywh.dtype, raw_xywh.device
    grid_x = torch.arange(w, dtype=dtype, device=device).view(1, 1, 1, w)
    grid_y = torch.arange(h, dtype=dtype, device=device).view(1, 1, h, 1)
    pw = anchors[:, 0].to(dtype).view(1, num_anchors, 1, 1)
    ph = anchors[:, 1].to(dtype).view(1, num_anchors, 1, 1)
    bx = (grid_x + torch.sigmoid(raw_xywh[:, :, 0])) / w
    by = (grid_y + torch.sigmoid(raw_xywh[:, :, 1])) / h
    bw = pw * torch.exp(raw_xywh[:, :, 2]) / w
    bh = ph * torch.exp(raw_xywh[:, :, 3]) / h
    return torch.stack((bx, by, bw, bh), dim=-1)


def box_iou_pairs_np(boxes1: np.ndarray, boxes2: np.ndarray, pixel_offset: float = 0.0) -> np.ndarray:
    """IoU of aligned pairs: boxes1[i] with boxes2[i]; boxes1, boxes2 (float[N, 4]) xyxy -> float64[N].

    The element-wise twin of :func:`box_iou_np`, with the same float operations in the same order
    (which are the VOC devkit's with ``pixel_offset=1`` on its 1-based inclusive coordinates), so
    that metrics can expand only the pairs they need and still reproduce the devkit bit for bit.
    """
    b1 = np.asarray(boxes1, np.float64).reshape(-1, 4)
    b2 = np.asarray(boxes2, np.float64).reshape(-1, 4)
    iw = np.minimum(b1[:, 2], b2[:, 2]) - np.maximum(b1[:, 0], b2[:, 0]) + pixel_offset
    ih = np.minimum(b1[:, 3], b2[:, 3]) - np.maximum(b1[:, 1], b2[:, 1]) + pixel_offset
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area1 = (b1[:, 2] - b1[:, 0] + pixel_offset) * (b1[:, 3] - b1[:, 1] + pixel_offset)
    area2 = (b2[:, 2] - b2[:, 0] + pixel_offset) * (b2[:, 3] - b2[:, 1] + pixel_offset)
    return inter / np.maximum(area1 + area2 - inter, np.finfo(np.float64).eps)


# ---------------------------------------------------------------------------------------------
# Boxes through the training transforms (NumPy, float32)
# ---------------------------------------------------------------------------------------------


def map_boxes(boxes: np.ndarray, affine: tuple[float, float, float, float]) -> np.ndarray:
    """boxes (float[N, 4]) xyxy through ``u = x * sx + tx, v = y * sy + ty`` (sx, sy > 0) -> float32[N, 4]."""
    sx, sy, tx, ty = affine
    scale = np.array([sx, sy, sx, sy], np.float32)
    offset = np.array([tx, ty, tx, ty], np.float32)
    return np.asarray(boxes, np.float32).reshape(-1, 4) * scale + offset


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Mirror boxes (float[N, 4] xyxy pixels) left-right in an image ``width`` wide: ``x -> width - x``."""
    flipped = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    flipped[:, [0, 2]] = width - flipped[:, [2, 0]]
    return flipped


def clip_boxes(
    boxes: np.ndarray, width: int, height: int, min_visibility: float = 0.0, min_size: float = DARKNET_MIN_BOX
) -> tuple[np.ndarray, np.ndarray]:
    """Clip boxes (float[N, 4] xyxy pixels) to ``[0, width] x [0, height]`` and say which to keep.

    A box is kept when its clipped width >= ``min_size * width`` and height >= ``min_size * height`` (Darknet's
    0.001 rule) and its clipped area is at least ``min_visibility`` of its unclipped area.
    Returns ``(clipped float32[N, 4], keep bool[N])``.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    limits = np.array([width, height, width, height], np.float32)
    clipped = np.minimum(np.maximum(boxes, 0.0), limits)
    wh = clipped[:, 2:] - clipped[:, :2]
    keep = cast(np.ndarray, (wh >= min_size * limits[:2]).all(axis=1))  # axis=1 of a 2-D array: always an array
    if min_visibility > 0:
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        keep &= wh[:, 0] * wh[:, 1] >= min_visibility * np.maximum(area, np.finfo(np.float32).tiny)
    return clipped, keep


# ---------------------------------------------------------------------------------------------
# Darknet's letterbox geometry (integer pixels)
# ---------------------------------------------------------------------------------------------


class LetterboxParams(NamedTuple):
    """Where an image lands inside the letterboxed network input (pixels).

    The image is resized to (new_w, new_h) and pasted at (pad_x, pad_y); an original pixel coordinate x maps to
    ``x * new_w / image_w + pad_x`` (y likewise).
    """

    new_w: int
    new_h: int
    pad_x: int
    pad_y: int


def letterbox_geometry(image_sizes: torch.Tensor, input_w: int, input_h: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Darknet's ``letterbox_image`` geometry for a batch, in integers.

    image_sizes (Tensor[B, 2]) original (w, h) -> (new_wh (Tensor[B, 2] int64), pad_xy (Tensor[B, 2] int64)):
    the side that limits the scale fills the input exactly, the other is ``size * input / limiting_size`` rounded
    down, and the image is pasted at ``(input - new) // 2``. Both letterboxes (``yolov2.data.transforms.letterbox``,
    uint8, and ``yolov2.preprocess.letterbox_tensor``, float) call this function, so the pixels and the inverse
    (:func:`yolov2.postprocess.to_image_pixels`) share one geometry.
    """
    sizes = torch.as_tensor(image_sizes).to(torch.int64).reshape(-1, 2)
    w, h = sizes[:, 0], sizes[:, 1]
    width_limited = input_w * h < input_h * w  # input_w / w < input_h / h, exactly
    new_w = torch.where(width_limited, torch.full_like(w, input_w), torch.div(w * input_h, h, rounding_mode="floor"))
    new_h = torch.where(width_limited, torch.div(h * input_w, w, rounding_mode="floor"), torch.full_like(h, input_h))
    new_wh = torch.stack((new_w, new_h), 1)
    pad = torch.div(torch.tensor([input_w, input_h], device=sizes.device) - new_wh, 2, rounding_mode="floor")
    return new_wh, pad


def letterbox_params(image_w: int, image_h: int, input_w: int, input_h: int) -> LetterboxParams:
    """:func:`letterbox_geometry` for one image, as plain ints."""
    new_wh, pad = letterbox_geometry(torch.tensor([[image_w, image_h]]), input_w, input_h)
    return LetterboxParams(int(new_wh[0, 0]), int(new_wh[0, 1]), int(pad[0, 0]), int(pad[0, 1]))


# ---------------------------------------------------------------------------------------------
# The padded truth tensor (what batches carry and the region loss takes)
# ---------------------------------------------------------------------------------------------


def targets_from_boxes(
    samples: Sequence[tuple[torch.Tensor, torch.Tensor]],
    input_w: int,
    input_h: int,
    max_boxes: int | None = None,
) -> torch.Tensor:
    """Pack per-image boxes into the padded truth tensor that :func:`yolov2.loss.region_loss` takes.

    samples: one ``(boxes, labels)`` per image, boxes (Tensor[K, 4]) xyxy in pixels of the network input (after
    letterbox/resize), labels (Tensor[K]) int. Returns Tensor[B, T, 5] float32 rows ``[label, cx, cy, w, h]``
    normalised to [0, 1] by the input size, in the given order, padded with rows of -1 (label -1 = padding).
    T = ``max_boxes`` or, if None, the largest K of the batch. More than ``max_boxes`` boxes is an error rather
    than a silent truncation.
    """
    counts = [int(boxes.shape[0]) for boxes, _ in samples]
    width = max(counts, default=0) if max_boxes is None else max_boxes
    for index, count in enumerate(counts):
        if count > width:
            raise ValueError(f"targets_from_boxes: image {index} has {count} boxes, more than max_boxes={width}")
    out = torch.full((len(samples), width, 5), -1.0, dtype=torch.float32)
    scale = torch.tensor([input_w, input_h, input_w, input_h], dtype=torch.float32)
    for index, (boxes, labels) in enumerate(samples):
        if counts[index] == 0:
            continue
        out[index, : counts[index], 0] = labels.to(torch.float32)
        out[index, : counts[index], 1:] = xyxy_to_cxcywh(boxes.to(torch.float32) / scale)
    return out
