"""Anchor units: normalised (w, h) <-> Darknet's ``anchors=`` grid cells (at stride 32)."""

from __future__ import annotations

import numpy as np

from yolov2.errors import ConfigError


def to_grid_units(anchors: np.ndarray, input_size: int, stride: int = 32) -> np.ndarray:
    """Normalised anchors (float[k, 2]) -> grid cells at ``stride`` (Darknet's ``anchors=``):
    ``w * input_size / stride`` (13 cells across at 416)."""
    if input_size <= 0 or stride <= 0 or input_size % stride:
        raise ConfigError(f"input_size {input_size} must be a positive multiple of the stride {stride}")
    return np.asarray(anchors, dtype=np.float64) * (input_size / stride)


def from_grid_units(anchors: np.ndarray, input_size: int, stride: int = 32) -> np.ndarray:
    """Inverse of :func:`to_grid_units`: grid-cell anchors (e.g. a pinned Darknet list) -> normalised."""
    if input_size <= 0 or stride <= 0 or input_size % stride:
        raise ConfigError(f"input_size {input_size} must be a positive multiple of the stride {stride}")
    return np.asarray(anchors, dtype=np.float64) / (input_size / stride)
