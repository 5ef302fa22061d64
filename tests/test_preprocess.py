"""yolov2.preprocess against a literal port of Darknet's resize_image and against Darknet's own network input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from yolov2.boxes import letterbox_params
from yolov2.data.images import decode_rgb
from yolov2.preprocess import (
    RESIZE_MODES,
    darknet_resize,
    images_to_tensor,
    letterbox_tensor,
    plain_resize_tensor,
    to_planes,
)

f32 = np.float32


def resize_image_loop(im: np.ndarray, w: int, h: int) -> np.ndarray:
    """Darknet's ``resize_image`` (src/image.c) line by line, float32 scalars, so every rounding is Darknet's.

    Output width 1 / height 1: Darknet divides by zero (harmless for the width, whose one column is the last source
    column; for the height an undefined read), so the scale is 0 there, as in yolov2.preprocess.
    """
    channels, im_h, im_w = im.shape
    w_scale = f32(im_w - 1) / f32(w - 1) if w > 1 else f32(0)
    h_scale = f32(im_h - 1) / f32(h - 1) if h > 1 else f32(0)
    part = np.zeros((channels, im_h, w), np.float32)
    for k in range(channels):
        for r in range(im_h):
            for c in range(w):
                if c == w - 1 or im_w == 1:
                    val = im[k, r, im_w - 1]
                else:
                    sx = f32(c) * w_scale
                    ix = int(sx)
                    dx = sx - f32(ix)
                    val = (f32(1) - dx) * im[k, r, ix] + dx * im[k, r, ix + 1]
                part[k, r, c] = val
    resized = np.zeros((channels, h, w), np.float32)
    for k in range(channels):
        for r in range(h):
            sy = f32(r) * h_scale
            iy = int(sy)
            dy = sy - f32(iy)
            for c in range(w):
                resized[k, r, c] = (f32(1) - dy) * part[k, iy, c]
            if r == h - 1 or im_h == 1:
                continue
            for c in range(w):
                resized[k, r, c] += dy * part[k, iy + 1, c]
    return resized


@pytest.mark.parametrize(
    ("src_h", "src_w", "h", "w"),
    [
        (5, 7, 11, 13),  # upscale
        (31, 23, 7, 9),  # downscale
        (9, 14, 9, 21),  # one axis only
        (17, 13, 17, 13),  # identity
        (1, 9, 4, 5),  # one source row
        (9, 1, 5, 4),  # one source column
        (1, 1, 3, 3),
        (1, 1, 1, 1),
        (6, 8, 1, 5),  # one output row
        (6, 8, 5, 1),  # one output column
        (2, 5, 42, 5),  # Darknet's last row keeps only (1 - dy) * row 0 with dy = 1 - 6e-8
        (465, 12, 312, 7),  # the same quirk at a real letterbox height (raccoon-85.jpg, 620x465)
    ],
)
def test_darknet_resize_equals_the_loop_port(src_h: int, src_w: int, h: int, w: int):
    rng = np.random.default_rng(src_h * 1000 + src_w * 10 + h)
    image = rng.random((3, src_h, src_w), dtype=np.float32)
    ours = darknet_resize(torch.from_numpy(image), w, h).numpy()
    assert ours.shape == (3, h, w) and ours.dtype == np.float32
    # measured: bit-equal on every case
    assert np.abs(ours - resize_image_loop(image, w, h)).max() <= 1e-6


def test_darknet_resize_keeps_darknets_dark_last_row():
    """(h - 1) * float32((H - 1) / (h - 1)) rounds just below H - 1 for some sizes: Darknet then samples the last
    row as (1 - dy) * row H - 2 with dy ~ 1 and skips the second term, so the row is nearly black. We keep it."""
    image = torch.full((3, 2, 4), 0.8)
    out = darknet_resize(image, 4, 42)
    assert float(out[:, -1].max()) < 1e-6
    assert torch.allclose(out[:, :-1], torch.full_like(out[:, :-1], 0.8))


def test_uint8_to_float_is_darknets_division():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    expected = (np.arange(256) / 255.0).astype(np.float32).reshape(16, 16)  # (float)v / 255. in double
    assert np.array_equal(to_planes(values).numpy()[1], expected)


@pytest.mark.parametrize("resize", RESIZE_MODES)
def test_letterbox_places_the_image_on_exact_gray(resize: str):
    image = np.random.default_rng(1).integers(0, 256, (281, 500, 3), dtype=np.uint8)
    out = letterbox_tensor(image, 416, 416, resize)
    p = letterbox_params(500, 281, 416, 416)
    assert out.shape == (3, 416, 416) and out.dtype == torch.float32
    inside = torch.zeros(416, 416, dtype=torch.bool)
    inside[p.pad_y : p.pad_y + p.new_h, p.pad_x : p.pad_x + p.new_w] = True
    assert bool((out[:, ~inside] == 0.5).all())
    resized = plain_resize_tensor(image, p.new_w, p.new_h, resize)
    assert torch.equal(out[:, inside].reshape(3, p.new_h, p.new_w), resized)


def test_letterbox_of_a_sliver_is_the_gray_canvas():
    out = letterbox_tensor(np.zeros((1, 1000, 3), np.uint8), 416, 416)
    assert bool((out == 0.5).all())


@pytest.mark.parametrize("letterboxed", [True, False])
def test_images_to_tensor(letterboxed: bool):
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((40, 60), (75, 31))]
    batch = images_to_tensor(images, 64, letterboxed, "darknet")
    assert batch.shape == (2, 3, 64, 64) and batch.dtype == torch.float32
    one = letterbox_tensor if letterboxed else plain_resize_tensor
    assert torch.equal(batch[1], one(images[1], 64, 64, "darknet"))
    assert images_to_tensor([], 64, letterboxed).shape == (0, 3, 64, 64)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((8, 8, 3), np.float32),
        np.zeros((8, 8, 3), np.uint16),
        np.zeros((8, 8), np.uint8),
        np.zeros((8, 8, 4), np.uint8),
        np.zeros((3, 8, 8), np.uint8),
        np.zeros((0, 8, 3), np.uint8),
    ],
    ids=["float32", "uint16", "gray", "rgba", "chw", "empty"],
)
def test_bad_images_are_rejected(image: np.ndarray):
    for fn in (letterbox_tensor, plain_resize_tensor):
        with pytest.raises(ValueError, match="uint8|H x W x 3"):
            fn(image, 32, 32)
    with pytest.raises(ValueError):
        images_to_tensor([image], 32, True)


def test_unknown_resize_mode_is_named():
    image = np.zeros((8, 8, 3), np.uint8)
    for call in (
        lambda: letterbox_tensor(image, 32, 32, "bilinear"),
        lambda: plain_resize_tensor(image, 32, 32, "bilinear"),
        lambda: images_to_tensor([image], 32, False, "bilinear"),
    ):
        with pytest.raises(ValueError, match="'bilinear'.*'darknet', 'opencv'"):
            call()


def test_darknet_resize_rejects_bad_tensors():
    with pytest.raises(ValueError, match="float32"):
        darknet_resize(torch.zeros(3, 4, 4, dtype=torch.float64), 2, 2)
    with pytest.raises(ValueError, match="float32"):
        darknet_resize(torch.zeros(4, 4), 2, 2)
    with pytest.raises(ValueError, match="at least 1"):
        darknet_resize(torch.zeros(3, 4, 4), 0, 2)


@pytest.mark.parametrize("name", ["2007_000039", "2007_000032"])
def test_letterbox_matches_darknets_network_input(shared_data: Path, name: str):
    """Darknet's own input (stb_image decode, resize_image, embed on 0.5) against ours from libjpeg's decode.

    Measured (max / mean |diff| inside the image, x 255; fraction of bit-equal values):
      2007_000039: darknet 2.84 / 0.044, 90.0% equal; opencv 14.18 / 0.52, 2.9% equal
      2007_000032: darknet 2.31 / 0.069, 84.7% equal; opencv 11.32 / 0.63, 6.1% equal
    The darknet path's differences are the JPEG decoders'. torch's bilinear with align_corners=True (the same
    sampling in another float order) has the same max but only 67% / 62% bit-equal values.
    """
    folder = shared_data / "darknet_reference" / "yolov2-mini"
    if not (folder / f"{name}.npz").is_file():
        pytest.skip(f"Darknet reference numbers not found in {folder}")
    meta = json.loads((folder / f"{name}.json").read_text())
    reference = np.load(folder / f"{name}.npz")["input"]
    image = decode_rgb((shared_data / meta["image_path"]).read_bytes())
    geometry = meta["letterbox"]
    net_w, net_h = meta["network_size"]
    rows = np.zeros(net_h, bool)
    rows[geometry["paste_y"] : geometry["paste_y"] + geometry["new_h"]] = True
    cols = np.zeros(net_w, bool)
    cols[geometry["paste_x"] : geometry["paste_x"] + geometry["new_w"]] = True

    diffs = {}
    for resize in RESIZE_MODES:
        ours = letterbox_tensor(image, net_w, net_h, resize).numpy()
        for planes in (ours, reference):  # the gray is exactly 0.5 and exactly where Darknet pastes around
            assert np.array_equal(~np.all(planes == 0.5, axis=(0, 2)), rows)
            assert np.array_equal(~np.all(planes == 0.5, axis=(0, 1)), cols)
        assert np.array_equal(ours[:, ~rows], reference[:, ~rows])
        assert np.array_equal(ours[:, :, ~cols], reference[:, :, ~cols])
        inside = np.abs(ours - reference)[:, rows][:, :, cols]
        diffs[resize] = (inside.max(), inside.mean(), (inside == 0).mean())

    dk_max, dk_mean, dk_equal = diffs["darknet"]
    cv_max, cv_mean, _ = diffs["opencv"]
    assert dk_max <= 4 / 255
    assert dk_mean <= 0.15 / 255
    assert dk_equal >= 0.8
    assert cv_max > 3 * dk_max and cv_mean > 5 * dk_mean
