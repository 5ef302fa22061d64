"""Tests for yolov2/data/color.py: Darknet's HSV distortion against its formula computed pixel by pixel with
``colorsys`` (rgb_to_hsv, scale S and V, shift H, hsv_to_rgb, clip), on the CPU (uint8) and the device (float).
"""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch

from rect_images import RECTS, rect_image
from yolov2.data import transforms as T
from yolov2.data.color import ColorJitter, color_params, darknet_color, darknet_color_tensor, sample_color_jitter


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
    patch[0, :8] = [
        (0, 0, 0),
        (255, 255, 255),
        (128, 128, 128),
        (255, 0, 0),
        (0, 255, 0),
        (0, 0, 255),
        (255, 255, 0),
        (10, 200, 30),
    ]
    return patch


@pytest.mark.parametrize("dsat,dexp", [(1.4, 0.7), (0.7, 1.4), (1.5, 1.5), (1 / 1.5, 1 / 1.5), (1.0, 1.3)])
def test_saturation_and_exposure_match_darknet_exactly(colour_patch, dsat, dexp):
    out = darknet_color(colour_patch, ColorJitter(0.0, dsat, dexp))
    ref = darknet_reference(colour_patch, 0.0, dsat, dexp)
    assert np.abs(out - ref).max() <= 1.0  # rounding to uint8 only


@pytest.mark.parametrize("dhue,dsat,dexp", [(20 / 256, 1.0, 1.0), (-25 / 256, 1.5, 1.5), (13 / 256, 0.8, 1.2)])
def test_hue_shift_matches_darknet_up_to_8bit_hsv(colour_patch, dhue, dsat, dexp):
    """OpenCV's 8-bit HSV has 256 hue steps and 8-bit S: a channel may move by a few levels, times the gain."""
    out = darknet_color(colour_patch, ColorJitter(dhue, dsat, dexp)).astype(np.float64)
    ref = darknet_reference(colour_patch, dhue, dsat, dexp)
    diff = np.abs(out - ref)
    assert diff.mean() <= 1.5
    assert diff.max() <= 8 * max(1.0, dsat * dexp) + 1
    wrong_way = np.abs(out - darknet_reference(colour_patch, -dhue, dsat, dexp)).mean()
    assert wrong_way > 3 * diff.mean()


def test_hue_direction_red_to_yellow():
    red = np.full((2, 2, 3), (255, 0, 0), np.uint8)
    out = darknet_color(red, ColorJitter(1 / 6, 1.0, 1.0))  # 60 degrees, rounded to 43/256 of a turn
    assert out[0, 0, 0] >= 248 and out[0, 0, 1] >= 248 and out[0, 0, 2] == 0


def test_color_tensor_matches_darknet(colour_patch):
    jitters = [ColorJitter(0.0731, 1.37, 0.74), ColorJitter(-0.09, 0.7, 1.45), None]
    batch = torch.from_numpy(np.stack([colour_patch] * 3)).permute(0, 3, 1, 2).float() / 255
    out = darknet_color_tensor(batch, color_params(jitters))
    for i, j in enumerate(jitters):
        j = j or ColorJitter()
        ref = darknet_reference(colour_patch, j.dhue, j.dsat, j.dexp) / 255.0
        np.testing.assert_allclose(out[i].permute(1, 2, 0).numpy(), ref, atol=1e-5)


def test_color_changes_colour_not_geometry():
    image, boxes, labels = rect_image(120, 90, [(10, 10, 50, 40), (60, 20, 110, 80)])
    rng = np.random.default_rng(5)
    for _ in range(10):
        jitter = sample_color_jitter(0.1, 1.5, 1.5, rng)
        out = darknet_color(image, jitter)
        assert not out[image.max(axis=2) == 0].any()  # black stays black: V = 0 scales to 0
        for x1, y1, x2, y2 in boxes.astype(int):
            region = out[y1:y2, x1:x2].reshape(-1, 3)
            assert (region == region[0]).all() and region[0].any()  # one uniform, visible colour per rectangle


def test_color_draws_follow_darknet_rand_scale():
    rng = np.random.default_rng(2)
    draws = [sample_color_jitter(0.1, 1.5, 1.5, rng) for _ in range(4000)]
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
    device = darknet_color_tensor(tensor, color_params([deferred.color]))[0].permute(1, 2, 0).numpy() * 255
    assert np.abs(device - cpu.image).mean() < 1.5  # float exact vs 8-bit HSV
