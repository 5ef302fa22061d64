"""Tests for yolov2/data/transforms.py.

Boxes are checked against the pixels themselves: synthetic images hold filled rectangles of distinct colours
(kept 3+ px from the image border, so edge replication only repeats background), and after a transform each
output box must tightly enclose the pixels of its colour. Colour is checked against Darknet's formula computed
pixel by pixel with ``colorsys`` (rgb_to_hsv, scale S and V, shift H, hsv_to_rgb, clip).
"""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch

from yolov2.data import transforms as T
from yolov2.postprocess import letterbox_params, to_image_pixels

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255), (255, 128, 0),
           (128, 0, 255)]
IDENTITY_COLOR = {"hue": 0.0, "saturation": 1.0, "exposure": 1.0}


def rect_image(width: int, height: int, rects: list[tuple[int, int, int, int]], first_colour: int = 0):
    """Black image with rectangle i (x1, y1, x2, y2; pixel columns x1..x2-1) filled with COLOURS[first + i]."""
    image = np.zeros((height, width, 3), np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(rects):
        image[y1:y2, x1:x2] = COLOURS[first_colour + i]
    return image, np.array(rects, np.float32).reshape(-1, 4), np.arange(first_colour, first_colour + len(rects))


def pixel_box(image: np.ndarray, colour: tuple[int, int, int], tol: int = 60) -> np.ndarray | None:
    """Continuous xyxy box around the pixels within ``tol`` of ``colour`` (None if there are none)."""
    mask = np.abs(image.astype(np.int32) - np.array(colour)).max(axis=2) <= tol
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


def assert_boxes_match_pixels(image, boxes, labels, all_labels, tol=2.0):
    """Every kept box encloses its colour's pixels within ``tol`` px; dropped colours have (almost) no pixels."""
    assert len(boxes) == len(labels)
    for label in all_labels:
        found = pixel_box(image, COLOURS[label])
        rows = np.nonzero(labels == label)[0]
        if len(rows) == 0:
            assert found is None or min(found[2] - found[0], found[3] - found[1]) <= tol, (label, found)
            continue
        assert len(rows) == 1
        box = boxes[rows[0]]
        if found is None:  # a sliver thinner than a pixel survives as a box but leaves no solid pixel
            assert min(box[2] - box[0], box[3] - box[1]) <= tol, (label, box)
            continue
        np.testing.assert_allclose(box, found, atol=tol, err_msg=f"colour {label}")


RECTS = [(10, 12, 60, 50), (90, 30, 170, 110), (40, 90, 80, 140), (150, 5, 195, 40)]


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
    np.testing.assert_allclose(T.map_boxes(np.array([[0, 0, 60, 40]]), affine), [[60, 40, 180, 120]])


def test_clip_boxes_matches_a_plain_loop():
    rng = np.random.default_rng(1)
    boxes = rng.uniform(-50, 250, (200, 4)).astype(np.float32)
    boxes[:, 2:] = boxes[:, :2] + rng.uniform(0, 120, (200, 2))
    width, height, min_vis = 200, 150, 0.3
    clipped, keep = T.clip_boxes(boxes, width, height, min_visibility=min_vis)
    for b, c, k in zip(boxes, clipped, keep):
        x1, y1, x2, y2 = (min(max(float(b[0]), 0), width), min(max(float(b[1]), 0), height),
                          min(max(float(b[2]), 0), width), min(max(float(b[3]), 0), height))
        np.testing.assert_allclose(c, [x1, y1, x2, y2], atol=1e-5)
        visible = (x2 - x1) * (y2 - y1) / max((b[2] - b[0]) * (b[3] - b[1]), 1e-12)
        expect = (x2 - x1) >= 0.001 * width and (y2 - y1) >= 0.001 * height and visible >= min_vis
        assert k == expect


def test_sample_may_end_with_no_boxes():
    image, boxes, labels = rect_image(200, 150, [(10, 10, 20, 20)])
    empty = T.darknet_augment(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), 64,
                              np.random.default_rng(0))
    assert empty.boxes.shape == (0, 4) and empty.labels.shape == (0,)
    # a window that misses the only box: it is dropped, not kept as a degenerate box
    out, affine = T.crop_resize(image, T.CropWindow(100, 50, 100, 100), 64, 64)
    clipped, keep = T.clip_boxes(T.map_boxes(boxes, affine), 64, 64)
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
# Colour
# ---------------------------------------------------------------------------------------------


def darknet_reference(image: np.ndarray, dhue: float, dsat: float, dexp: float) -> np.ndarray:
    """Darknet's distort_image, pixel by pixel with colorsys, on [0, 1] floats; returns float RGB in [0, 255]."""
    out = np.empty(image.shape, np.float64)
    for idx in np.ndindex(image.shape[:2]):
        h, s, v = colorsys.rgb_to_hsv(*(image[idx] / 255.0))
        h = (h + dhue) % 1.0
        out[idx] = np.clip(colorsys.hsv_to_rgb(h, s * dsat, v * dexp), 0, 1) * 255.0
    return out


@pytest.fixture(scope="module")
def colour_patch() -> np.ndarray:
    rng = np.random.default_rng(0)
    patch = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    patch[0, :8] = [(0, 0, 0), (255, 255, 255), (128, 128, 128), (255, 0, 0), (0, 255, 0), (0, 0, 255),
                    (255, 255, 0), (10, 200, 30)]
    return patch


@pytest.mark.parametrize("dsat,dexp", [(1.4, 0.7), (0.7, 1.4), (1.5, 1.5), (1 / 1.5, 1 / 1.5), (1.0, 1.3)])
def test_saturation_and_exposure_match_darknet_exactly(colour_patch, dsat, dexp):
    out = T.darknet_color(colour_patch, T.ColorJitter(0.0, dsat, dexp))
    ref = darknet_reference(colour_patch, 0.0, dsat, dexp)
    assert np.abs(out - ref).max() <= 1.0  # rounding to uint8 only


@pytest.mark.parametrize("dhue,dsat,dexp", [(20 / 256, 1.0, 1.0), (-25 / 256, 1.5, 1.5), (13 / 256, 0.8, 1.2)])
def test_hue_shift_matches_darknet_up_to_8bit_hsv(colour_patch, dhue, dsat, dexp):
    """OpenCV's 8-bit HSV has 256 hue steps and 8-bit S: a channel may move by a few levels, times the gain."""
    out = T.darknet_color(colour_patch, T.ColorJitter(dhue, dsat, dexp)).astype(np.float64)
    ref = darknet_reference(colour_patch, dhue, dsat, dexp)
    diff = np.abs(out - ref)
    assert diff.mean() <= 1.5
    assert diff.max() <= 8 * max(1.0, dsat * dexp) + 1
    wrong_way = np.abs(out - darknet_reference(colour_patch, -dhue, dsat, dexp)).mean()
    assert wrong_way > 3 * diff.mean()


def test_hue_direction_red_to_yellow():
    red = np.full((2, 2, 3), (255, 0, 0), np.uint8)
    out = T.darknet_color(red, T.ColorJitter(1 / 6, 1.0, 1.0))  # 60 degrees, rounded to 43/256 of a turn
    assert out[0, 0, 0] >= 248 and out[0, 0, 1] >= 248 and out[0, 0, 2] == 0


def test_color_tensor_matches_darknet(colour_patch):
    jitters = [T.ColorJitter(0.0731, 1.37, 0.74), T.ColorJitter(-0.09, 0.7, 1.45), None]
    batch = torch.from_numpy(np.stack([colour_patch] * 3)).permute(0, 3, 1, 2).float() / 255
    out = T.darknet_color_tensor(batch, T.color_params(jitters))
    for i, j in enumerate(jitters):
        j = j or T.ColorJitter()
        ref = darknet_reference(colour_patch, j.dhue, j.dsat, j.dexp) / 255.0
        np.testing.assert_allclose(out[i].permute(1, 2, 0).numpy(), ref, atol=1e-5)


def test_color_changes_colour_not_geometry():
    image, boxes, labels = rect_image(120, 90, [(10, 10, 50, 40), (60, 20, 110, 80)])
    rng = np.random.default_rng(5)
    for _ in range(10):
        jitter = T.sample_color_jitter(0.1, 1.5, 1.5, rng)
        out = T.darknet_color(image, jitter)
        assert not out[image.max(axis=2) == 0].any()  # black stays black: V = 0 scales to 0
        for x1, y1, x2, y2 in boxes.astype(int):
            region = out[y1:y2, x1:x2].reshape(-1, 3)
            assert (region == region[0]).all() and region[0].any()  # one uniform, visible colour per rectangle


def test_color_draws_follow_darknet_rand_scale():
    rng = np.random.default_rng(2)
    draws = [T.sample_color_jitter(0.1, 1.5, 1.5, rng) for _ in range(4000)]
    hue = np.array([d.dhue for d in draws])
    sat = np.array([d.dsat for d in draws])
    assert hue.min() >= -0.1 and hue.max() <= 0.1 and abs(hue.mean()) < 0.01
    assert sat.min() >= 1 / 1.5 - 1e-9 and sat.max() <= 1.5
    up, down = sat[sat >= 1], 1 / sat[sat < 1]
    assert 0.45 < len(up) / len(sat) < 0.55
    # rand_scale: U(1, s) or its inverse, so both halves average (1 + 1.5) / 2 on the U(1, s) side
    assert abs(up.mean() - 1.25) < 0.02 and abs(down.mean() - 1.25) < 0.02


def test_deferred_color_draws_then_applies_on_the_device():
    image, boxes, labels = rect_image(200, 150, RECTS)
    cpu = T.darknet_augment(image, boxes, labels, 96, np.random.default_rng(4))
    deferred = T.darknet_augment(image, boxes, labels, 96, np.random.default_rng(4), defer_color=True)
    assert deferred.color is not None and np.array_equal(cpu.boxes, deferred.boxes)
    tensor = torch.from_numpy(deferred.image).permute(2, 0, 1)[None].float() / 255
    device = T.darknet_color_tensor(tensor, T.color_params([deferred.color]))[0].permute(1, 2, 0).numpy() * 255
    assert np.abs(device - cpu.image).mean() < 1.5  # float exact vs 8-bit HSV


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
    mask[p.pad_y:p.pad_y + p.new_h, p.pad_x:p.pad_x + p.new_w] = False
    assert (out[mask] == T.LETTERBOX_FILL).all()
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
    back = to_image_pixels(torch.from_numpy(out_boxes / [128, 96, 128, 96])[None], (128, 96),
                           torch.tensor([[200, 150]]), letterbox=False)
    np.testing.assert_allclose(back[0].numpy(), boxes, atol=1e-3)


def test_eval_transform_is_deterministic_letterbox():
    image, boxes, labels = rect_image(200, 150, RECTS)
    a = T.eval_transform(image, boxes, labels, 128)
    b = T.eval_transform(image, boxes, labels, 128)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, T.letterbox(image, boxes, 128)[1])


# ---------------------------------------------------------------------------------------------
# Mosaic, mixup, albumentations wrappers
# ---------------------------------------------------------------------------------------------


def test_mosaic_boxes_follow_pixels_in_their_quadrants():
    images, boxes, labels = [], [], []
    for q in range(4):
        img, bxs, lbs = rect_image(160, 120, [(10, 10, 70, 60), (80, 50, 150, 110)], first_colour=2 * q)
        images.append(img)
        boxes.append(bxs)
        labels.append(lbs)
    for seed in range(10):
        out = T.mosaic4(images, boxes, labels, 256, np.random.default_rng(seed), **IDENTITY_COLOR)
        assert out.image.shape == (256, 256, 3)
        assert_boxes_match_pixels(out.image, out.boxes, out.labels, range(8))


def test_mixup_blends_with_a_beta_weight():
    a = T.Augmented(np.full((8, 8, 3), 200, np.uint8), np.array([[0, 0, 4, 4]], np.float32), np.array([1]))
    b = T.Augmented(np.full((8, 8, 3), 40, np.uint8), np.array([[2, 2, 8, 8]], np.float32), np.array([3]))
    lam = np.random.default_rng(9).beta(32.0, 32.0)
    out = T.mixup(a, b, np.random.default_rng(9))
    assert np.abs(out.image.astype(float) - (200 * lam + 40 * (1 - lam))).max() <= 1
    assert out.boxes.tolist() == [[0, 0, 4, 4], [2, 2, 8, 8]] and out.labels.tolist() == [1, 3]


def test_albumentations_compose_equals_the_direct_functions():
    image, boxes, labels = rect_image(200, 150, RECTS)
    compose = T.darknet_compose(128, seed=11, save_applied_params=True)
    for _ in range(8):
        result = compose(image=image, bboxes=boxes, labels=labels)
        applied = dict(result["applied_transforms"])
        window, jitter = applied["DarknetCropResize"]["window"], applied["DarknetHSV"]["jitter"]
        expect, affine = T.crop_resize(image, window, 128, 128)
        expect_boxes = T.map_boxes(boxes, affine)
        if "HorizontalFlip" in applied:
            expect = expect[:, ::-1]
            expect_boxes = T.flip_boxes(expect_boxes, 128)
        expect = T.darknet_color(np.ascontiguousarray(expect), jitter)
        clipped, keep = T.clip_boxes(expect_boxes, 128, 128)
        assert np.array_equal(result["image"], expect)
        np.testing.assert_allclose(np.asarray(result["bboxes"]).reshape(-1, 4), clipped[keep], atol=1e-3)
        assert list(result["labels"]) == list(labels[keep])
