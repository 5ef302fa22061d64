"""yolov2/data/classify_transforms.py: the defaults against Darknet's cfg files, the warp against a transcription of
Darknet's rotate_crop_image + bilinear_interpolate, the draws' ranges, the crop window, flip, output format and
determinism, and the validation centre crop."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from yolov2.data.classify_transforms import (
    DARKNET19,
    DARKNET19_448,
    ClassifierAugment,
    apply_classifier_draw,
    center_crop_resize,
    classifier_train_transform,
    classifier_val_transform,
    resized_size,
    sample_classifier_draw,
)
from yolov2.data.color import ColorJitter
from yolov2.errors import ConfigError

NO_COLOR = ColorJitter()


def net_section(path: Path) -> dict[str, str]:
    """The ``[net]`` options of a Darknet cfg file."""
    options: dict[str, str] = {}
    for line in path.read_text().splitlines()[1:]:
        line = line.split("#")[0].strip()
        if line.startswith("["):
            break
        if "=" in line:
            key, value = (part.strip() for part in line.split("=", 1))
            options[key] = value
    return options


def smooth_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth colours in [40, 215] (bilinear resamplers agree closely on it; no pixel is black)."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(40, 216, (4, 5, 3)).astype(np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC).clip(40, 215).astype(np.uint8)


def darknet_rotate_crop(image: np.ndarray, draw, size: int) -> np.ndarray:
    """Darknet's random_augment_args scale + rotate_crop_image + bilinear_interpolate (zeros outside), on floats."""
    h, w = image.shape[:2]
    scale = draw.short_side / (h if h < w * draw.aspect else w * draw.aspect)
    rad = draw.angle * 2 * math.pi / 360.0
    out = np.zeros((size, size, 3))
    src = image.astype(np.float64)

    def pixel(x: int, y: int) -> np.ndarray:
        return src[y, x] if 0 <= x < w and 0 <= y < h else np.zeros(3)

    for y in range(size):
        for x in range(size):
            u = (x - size / 2.0) / scale * draw.aspect + draw.dx / scale * draw.aspect
            v = (y - size / 2.0) / scale + draw.dy / scale
            rx = math.cos(rad) * u - math.sin(rad) * v + w / 2.0
            ry = math.sin(rad) * u + math.cos(rad) * v + h / 2.0
            ix, iy = math.floor(rx), math.floor(ry)
            fx, fy = rx - ix, ry - iy
            out[y, x] = (
                (1 - fy) * (1 - fx) * pixel(ix, iy)
                + fy * (1 - fx) * pixel(ix, iy + 1)
                + (1 - fy) * fx * pixel(ix + 1, iy)
                + fy * fx * pixel(ix + 1, iy + 1)
            )
    return out


def test_defaults_are_the_darknet19_cfgs(shared_data: Path):
    for preset, name in ((DARKNET19, "darknet19.cfg"), (DARKNET19_448, "darknet19_448.cfg")):
        net = net_section(shared_data / "darknet_cfg" / name)
        width = int(net["width"])
        assert preset.size == width == int(net["height"])
        assert preset.min_crop == int(net.get("min_crop", width))  # Darknet's parser: min_crop defaults to the width
        assert preset.max_crop == int(net.get("max_crop", 2 * width))
        assert preset.angle == float(net["angle"]) and preset.hue == float(net["hue"])
        for key in ("aspect", "saturation", "exposure"):  # rand_scale(.75) spans [0.75, 1 / 0.75]
            assert getattr(preset, key) == pytest.approx(1 / float(net[key]))


@pytest.mark.parametrize(
    "aspect,short_side,angle,dx,dy",
    [(1.0, 24, 0.0, 0.0, 0.0), (4 / 3, 30, 7.0, 3.5, -2.0), (0.75, 26, -6.0, -1.5, 4.0), (1.1, 14, 5.0, 0.0, 1.0)],
)
def test_warp_matches_darknet_rotate_crop_image(aspect, short_side, angle, dx, dy):
    """Within rounding to uint8 of Darknet's float bilinear (OpenCV samples at 1/32 pixel, which a smooth image
    does not show). short_side 14 < size 20 leaves black borders, where Darknet reads zeros too."""
    image = smooth_image(37, 29)
    draw = sample_classifier_draw(37, 29, DARKNET19, np.random.default_rng(0))
    draw = replace(draw, aspect=aspect, short_side=short_side, angle=angle, dx=dx, dy=dy, flip=False, color=NO_COLOR)
    ours = apply_classifier_draw(image, draw, 20).astype(np.float64)
    reference = darknet_rotate_crop(image, draw, 20)
    diff = np.abs(ours - reference)
    assert diff.mean() < 0.5 and diff.max() <= 1.0
    if short_side < 20:
        assert (reference.max(axis=2) == 0).any() and (ours.max(axis=2) == 0).any()
    # a mirrored or unrotated warp would be far off: the comparison can fail
    if angle:
        assert np.abs(apply_classifier_draw(image, replace(draw, angle=0.0), 20) - reference).mean() > 2.0


def test_draws_stay_in_darknets_ranges():
    settings = replace(DARKNET19, min_crop=10, max_crop=12, size=8)
    rng = np.random.default_rng(1)
    draws = [sample_classifier_draw(40, 30, settings, rng) for _ in range(600)]
    aspects = np.array([d.aspect for d in draws])
    assert aspects.min() >= 0.75 - 1e-9 and aspects.max() <= 4 / 3 + 1e-9
    assert (aspects < 0.95).any() and (aspects > 1.05).any()
    assert {d.short_side for d in draws} == {10, 11, 12}  # both ends included, as Darknet's rand_int
    angles = np.array([d.angle for d in draws])
    assert np.abs(angles).max() <= 7.0 and angles.min() < -5 and angles.max() > 5
    assert 0.4 < np.mean([d.flip for d in draws]) < 0.6
    assert max(abs(d.color.dhue) for d in draws) <= 0.1
    for factor in ([d.color.dsat for d in draws], [d.color.dexp for d in draws]):
        assert 0.75 - 1e-9 <= min(factor) < 0.85 and 1.25 < max(factor) <= 4 / 3 + 1e-9
    unflipped = replace(settings, flip=False)
    assert not any(sample_classifier_draw(40, 30, unflipped, rng).flip for _ in range(50))


def test_crop_window_lies_inside_the_resized_image():
    """With the short side at least ``size``, the window |offset| <= (side - size) / 2 stays inside the resized
    image: unrotated, no pixel of the output is the black outside (the image has none of its own)."""
    settings = ClassifierAugment(size=32, min_crop=32, max_crop=60, angle=0.0, hue=0.0, saturation=1.0, exposure=1.0)
    rng = np.random.default_rng(2)
    image = smooth_image(50, 35)
    for _ in range(40):
        draw = sample_classifier_draw(50, 35, settings, rng)
        new_w, new_h = resized_size(50, 35, draw.aspect, draw.short_side)
        assert min(new_w, new_h) == pytest.approx(draw.short_side)
        assert new_w / new_h == pytest.approx(50 / 35 / draw.aspect)
        left, top = new_w / 2 + draw.dx - 16, new_h / 2 + draw.dy - 16
        assert left >= 0 and top >= 0 and left + 32 <= new_w + 1e-9 and top + 32 <= new_h + 1e-9
        assert apply_classifier_draw(image, draw, 32).min() > 0
    # darknet19.cfg's short side may be below the input (128 < 256): the window then holds the whole image and
    # black around it, as Darknet
    small = replace(settings, min_crop=16, max_crop=16)
    out = apply_classifier_draw(image, sample_classifier_draw(50, 35, small, rng), 32)
    assert (out.max(axis=2) == 0).mean() > 0.3


def test_flip_mirrors_the_crop_exactly():
    image = smooth_image(60, 45)
    draw = sample_classifier_draw(60, 45, DARKNET19, np.random.default_rng(3))
    plain = apply_classifier_draw(image, replace(draw, flip=False), 48)
    flipped = apply_classifier_draw(image, replace(draw, flip=True), 48)
    assert np.array_equal(flipped, plain[:, ::-1]) and not np.array_equal(flipped, plain)


def test_train_transform_is_float_chw_in_unit_range_and_reproducible():
    image = smooth_image(90, 70)
    settings = replace(DARKNET19, size=64, min_crop=48, max_crop=96)
    a = classifier_train_transform(image, settings, np.random.default_rng(7))
    b = classifier_train_transform(image, settings, np.random.default_rng(7))
    c = classifier_train_transform(image, settings, np.random.default_rng(8))
    assert a.shape == (3, 64, 64) and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0 and float(a.std()) > 0.01
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="uint8 RGB"):
        classifier_train_transform(image.astype(np.float32), settings, np.random.default_rng(0))
    with pytest.raises(ConfigError):
        replace(DARKNET19, min_crop=300, max_crop=200)
    with pytest.raises(ConfigError):
        replace(DARKNET19, saturation=0.75)  # Darknet's cfg spelling: ours is its inverse, >= 1


def test_val_transform_resizes_the_short_side_and_crops_the_centre():
    import cv2

    tall = smooth_image(40, 100, seed=4)
    assert np.array_equal(center_crop_resize(tall, 40), tall[30:70])  # short side already 40: no resize
    wide = smooth_image(100, 40, seed=5)
    assert np.array_equal(center_crop_resize(wide, 40), wide[:, 30:70])
    odd = smooth_image(50, 33, seed=6)  # resize_min: 50 * 20 // 33 = 30 wide, then offset (30 - 20) // 2 = 5
    expected = cv2.resize(odd, (30, 20), interpolation=cv2.INTER_LINEAR)[:, 5:25]
    assert np.array_equal(center_crop_resize(odd, 20), expected)
    tensor = classifier_val_transform(odd, 20)
    assert tensor.shape == (3, 20, 20) and tensor.dtype == torch.float32
    assert torch.equal(tensor, torch.from_numpy(expected).permute(2, 0, 1).float() / 255)
