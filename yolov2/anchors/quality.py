"""How well anchors fit box shapes: the mean best IoU, and its curve over k (the paper's Figure 2)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from yolov2.anchors.assignment import BLOCK_SIZE, Backend, assign
from yolov2.anchors.kmeans import Update, kmeans_anchors
from yolov2.anchors.partitions import AssignMapper
from yolov2.anchors.shapes import validate_shapes


def mean_iou(wh: np.ndarray, anchors: np.ndarray, *, block_size: int = BLOCK_SIZE, backend: Backend = "auto") -> float:
    """Mean over boxes of the best IoU with any anchor; wh (float64[N, 2]) and anchors (float64[k, 2])
    in the same units (both normalised, or both grid cells at the same input size)."""
    stats, _ = assign(validate_shapes(wh), anchors, block_size=block_size, backend=backend)
    return stats.mean_iou


def iou_table(
    wh: np.ndarray,
    ks: Sequence[int] = range(1, 11),
    seed: int = 0,
    n_init: int = 3,
    max_iter: int = 300,
    update: Update = "mean",
    *,
    backend: Backend = "auto",
    mapper: AssignMapper | None = None,
) -> dict[int, float]:
    """Mean IoU of the best clustering for each k (the paper's Figure 2 "Box Generation" curve)."""
    wh = validate_shapes(wh)
    return {
        int(k): kmeans_anchors(wh, int(k), seed, n_init, max_iter, update, backend=backend, mapper=mapper).mean_iou
        for k in ks
    }
