"""Tests for yolov2/boxes.py's NumPy box geometry (the box side of the training transforms) against plain loops."""

from __future__ import annotations

import numpy as np

from yolov2.boxes import clip_boxes


def test_clip_boxes_matches_a_plain_loop():
    rng = np.random.default_rng(1)
    boxes = rng.uniform(-50, 250, (200, 4)).astype(np.float32)
    boxes[:, 2:] = boxes[:, :2] + rng.uniform(0, 120, (200, 2))
    width, height, min_vis = 200, 150, 0.3
    clipped, keep = clip_boxes(boxes, width, height, min_visibility=min_vis)
    for b, c, k in zip(boxes, clipped, keep):
        x1, y1, x2, y2 = (
            min(max(float(b[0]), 0), width),
            min(max(float(b[1]), 0), height),
            min(max(float(b[2]), 0), width),
            min(max(float(b[3]), 0), height),
        )
        np.testing.assert_allclose(c, [x1, y1, x2, y2], atol=1e-5)
        visible = (x2 - x1) * (y2 - y1) / max((b[2] - b[0]) * (b[3] - b[1]), 1e-12)
        expect = (x2 - x1) >= 0.001 * width and (y2 - y1) >= 0.001 * height and visible >= min_vis
        assert k == expect
