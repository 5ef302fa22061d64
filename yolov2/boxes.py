"""All box arithmetic in one place: formats, IoU, and width/height IoU for anchor matching.

Conventions: ``xyxy`` is (x1, y1, x2, y2), ``cxcywh`` is (centre x, centre y, width, height).
Which unit (pixels, normalised, grid cells) is stated at each call site; these functions don't care.
Torch functions reuse ``torchvision.ops``; the NumPy twins exist for the data and anchor code.
"""

from __future__ import annotations

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
]


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
