"""Tests for yolov2/data/albumentations_ops.py: the albumentations recipe equals the direct functions."""

from __future__ import annotations

import numpy as np

from rect_images import RECTS, rect_image
from yolov2.boxes import clip_boxes, flip_boxes, map_boxes
from yolov2.data import transforms as T
from yolov2.data.albumentations_ops import darknet_compose
from yolov2.data.color import darknet_color


def test_albumentations_compose_equals_the_direct_functions():
    image, boxes, labels = rect_image(200, 150, RECTS)
    compose = darknet_compose(128, seed=11, save_applied_params=True)
    for _ in range(8):
        result = compose(image=image, bboxes=boxes, labels=labels)
        applied = dict(result["applied_transforms"])
        window, jitter = applied["DarknetCropResize"]["window"], applied["DarknetHSV"]["jitter"]
        expect, affine = T.crop_resize(image, window, 128, 128)
        expect_boxes = map_boxes(boxes, affine)
        if "HorizontalFlip" in applied:
            expect = expect[:, ::-1]
            expect_boxes = flip_boxes(expect_boxes, 128)
        expect = darknet_color(np.ascontiguousarray(expect), jitter)
        clipped, keep = clip_boxes(expect_boxes, 128, 128)
        assert np.array_equal(result["image"], expect)
        np.testing.assert_allclose(np.asarray(result["bboxes"]).reshape(-1, 4), clipped[keep], atol=1e-3)
        assert list(result["labels"]) == list(labels[keep])
