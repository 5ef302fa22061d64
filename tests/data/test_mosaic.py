"""Tests for yolov2/data/mosaic.py: mosaic boxes follow their pixels, mixup blends with a Beta weight."""

from __future__ import annotations

import numpy as np

from rect_images import IDENTITY_COLOR, assert_boxes_match_pixels, rect_image
from yolov2.data import transforms as T
from yolov2.data.mosaic import mixup, mosaic4


def test_mosaic_boxes_follow_pixels_in_their_quadrants():
    images, boxes, labels = [], [], []
    for q in range(4):
        img, bxs, lbs = rect_image(160, 120, [(10, 10, 70, 60), (80, 50, 150, 110)], first_colour=2 * q)
        images.append(img)
        boxes.append(bxs)
        labels.append(lbs)
    for seed in range(10):
        out = mosaic4(images, boxes, labels, 256, np.random.default_rng(seed), **IDENTITY_COLOR)
        assert out.image.shape == (256, 256, 3)
        assert_boxes_match_pixels(out.image, out.boxes, out.labels, range(8))


def test_mixup_blends_with_a_beta_weight():
    a = T.Augmented(np.full((8, 8, 3), 200, np.uint8), np.array([[0, 0, 4, 4]], np.float32), np.array([1]))
    b = T.Augmented(np.full((8, 8, 3), 40, np.uint8), np.array([[2, 2, 8, 8]], np.float32), np.array([3]))
    lam = np.random.default_rng(9).beta(32.0, 32.0)
    out = mixup(a, b, np.random.default_rng(9))
    assert np.abs(out.image.astype(float) - (200 * lam + 40 * (1 - lam))).max() <= 1
    assert out.boxes.tolist() == [[0, 0, 4, 4], [2, 2, 8, 8]] and out.labels.tolist() == [1, 3]
