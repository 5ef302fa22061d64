"""Tests for yolov2/data/transforms.py.

Boxes are checked against the pixels themselves: synthetic images hold filled rectangles of distinct colours
(tests/rect_images.py), and after a transform each output box must tightly enclose the pixels of its colour.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rect_images import COLOURS, IDENTITY_COLOR, RECTS, assert_boxes_match_pixels, pixel_box, rect_image
from yolov2.boxes import clip_boxes, letterbox_params, map_boxes
from yolov2.data import transforms as T
from yolov2.postprocess import to_image_pixels
from yolov2.preprocess import LETTERBOX_FILL_UINT8


@pytest.mark.parametrize("size", [416, (320, 256), 160])
def test_darknet_geometry_keeps_boxes_on_their_pixels(size):
    image, boxes, labels = rect_image(200, 150, RECTS)
    kept = dropped = flipped_seen = 0
    for seed in range(25):
        rng = np.random.default_rng(seed)
        out = T.darknet_augment(image, boxes, labels, size, rng, jitter=0.3, **IDENTITY_COLOR)
        out_w, out_h = (size, size) if isinstance(size, int) else size
        assert out.image.shape == (out_h, out_w, 3) and out.image.dtype == np.uint8
        assert out.color is None
        assert ((out.boxes >= 0) & (out.boxes <= [out_w, out_h, out_w, out_h])).all()
        assert_boxes_match_pixels(out.image, out.boxes, out.labels, labels)
        kept += len(out.labels)
        dropped += len(labels) - len(out.labels)
        # a flip puts colour 0 (left part of the source) to the right half more often than not
        if len(out.labels) and 0 in out.labels:
            flipped_seen += out.boxes[list(out.labels).index(0), 0] > out_w / 2
    assert kept > 0 and flipped_seen > 0


def test_crop_window_follows_darknet_draws():
    rng = np.random.default_rng(0)
    w, h, jitter = 500, 375, 0.3
    dw, dh = int(w * jitter), int(h * jitter)
    lefts, rights = [], []
    for _ in range(2000):
        win = T.sample_crop_window(w, h, jitter, rng)
        assert all(isinstance(v, int) for v in (win.left, win.top, win.width, win.height))
        right = w - win.left - win.width
        bottom = h - win.top - win.height
        assert -dw < win.left < dw and -dw < right < dw and -dh < win.top < dh and -dh < bottom < dh
        lefts.append(win.left)
        rights.append(right)
    lefts = np.array(lefts)
    assert abs(lefts.mean()) < 5 and lefts.min() < -0.9 * dw and lefts.max() > 0.9 * dw  # U(-dw, dw), truncated
    assert abs(np.corrcoef(lefts, rights)[0, 1]) < 0.1  # drawn independently
    with pytest.raises(Exception, match="jitter"):
        T.sample_crop_window(w, h, 0.5, rng)


def test_crop_resize_pads_by_repeating_edges_and_maps_boxes():
    """A window larger than the image: the outside is edge pixels (Darknet's clamped crop_image)."""
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, 0] = (10, 20, 30)  # left edge column
    image[0, :] = (200, 100, 50)  # top edge row (wins the corner)
    window = T.CropWindow(left=-30, top=-20, width=120, height=80)
    out, affine = T.crop_resize(image, window, 240, 160)
    # the image occupies [60, 180) x [40, 120) of the output (scale 2); left strip repeats the left edge column
    assert (out[50:110, :55] == (10, 20, 30)).all()
    assert (out[:35, 70:170] == (200, 100, 50)).all()
    np.testing.assert_allclose(affine, (2.0, 2.0, 60.0, 40.0))
    np.testing.assert_allclose(map_boxes(np.array([[0, 0, 60, 40]]), affine), [[60, 40, 180, 120]])


def test_sample_may_end_with_no_boxes():
    image, boxes, labels = rect_image(200, 150, [(10, 10, 20, 20)])
    empty = T.darknet_augment(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), 64, np.random.default_rng(0))
    assert empty.boxes.shape == (0, 4) and empty.labels.shape == (0,)
    # a window that misses the only box: it is dropped, not kept as a degenerate box
    out, affine = T.crop_resize(image, T.CropWindow(100, 50, 100, 100), 64, 64)
    clipped, keep = clip_boxes(map_boxes(boxes, affine), 64, 64)
    assert not keep.any()


def test_augment_is_reproducible_from_the_seed():
    image, boxes, labels = rect_image(200, 150, RECTS)
    a = T.darknet_augment(image, boxes, labels, 128, np.random.default_rng(7))
    b = T.darknet_augment(image, boxes, labels, 128, np.random.default_rng(7))
    c = T.darknet_augment(image, boxes, labels, 128, np.random.default_rng(8))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.image, c.image)


def test_augment_writes_into_the_given_buffer():
    image, boxes, labels = rect_image(200, 150, RECTS)
    batch = np.zeros((2, 96, 96, 3), np.uint8)
    ref = T.darknet_augment(image, boxes, labels, 96, np.random.default_rng(3))
    out = T.darknet_augment(image, boxes, labels, 96, np.random.default_rng(3), out=batch[1])
    assert np.shares_memory(out.image, batch) and np.array_equal(batch[1], ref.image) and not batch[0].any()


# ---------------------------------------------------------------------------------------------
# Evaluation transforms
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("width,height", [(200, 150), (150, 200), (333, 117), (97, 301)])
def test_letterbox_pixels_and_round_trip(width, height):
    rects = [(5, 6, width // 3, height // 3), (width // 2, height // 2, width - 4, height - 5)]
    image, boxes, labels = rect_image(width, height, rects)
    size = 160
    out, out_boxes = T.letterbox(image, boxes, size)
    p = letterbox_params(width, height, size, size)
    assert out.shape == (size, size, 3)
    # the grey fill everywhere outside the resized image
    mask = np.ones((size, size), bool)
    mask[p.pad_y : p.pad_y + p.new_h, p.pad_x : p.pad_x + p.new_w] = False
    assert (out[mask] == LETTERBOX_FILL_UINT8).all()
    for i, label in enumerate(labels):
        np.testing.assert_allclose(out_boxes[i], pixel_box(out, COLOURS[label]), atol=1.5)
    # postprocess undoes it as Darknet's correct_region_boxes does: with the float padding (size - new) / 2,
    # half a pixel of the input from where an odd padding pasted the image
    back = to_image_pixels(torch.from_numpy(out_boxes / size)[None], (size, size), torch.tensor([[width, height]]))
    shift_x = (p.pad_x - (size - p.new_w) / 2) * width / p.new_w
    shift_y = (p.pad_y - (size - p.new_h) / 2) * height / p.new_h
    np.testing.assert_allclose(back[0].numpy(), boxes + np.array([shift_x, shift_y] * 2), atol=1e-3)


def test_plain_resize_pixels_and_round_trip():
    image, boxes, labels = rect_image(200, 150, RECTS)
    out, out_boxes = T.plain_resize(image, boxes, (128, 96))
    for i, label in enumerate(labels):
        np.testing.assert_allclose(out_boxes[i], pixel_box(out, COLOURS[label]), atol=1.5)
    back = to_image_pixels(
        torch.from_numpy(out_boxes / [128, 96, 128, 96])[None], (128, 96), torch.tensor([[200, 150]]), letterbox=False
    )
    np.testing.assert_allclose(back[0].numpy(), boxes, atol=1e-3)


def test_eval_transform_is_deterministic_letterbox():
    image, boxes, labels = rect_image(200, 150, RECTS)
    a = T.eval_transform(image, boxes, labels, 128)
    b = T.eval_transform(image, boxes, labels, 128)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, T.letterbox(image, boxes, 128)[1])
