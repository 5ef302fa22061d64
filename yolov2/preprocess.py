"""The network input from RGB images: letterboxed (or stretched) float planes, resized as Darknet or OpenCV does.

Why a choice of resize: Darknet's ``resize_image`` (``src/image.c``) is a separable bilinear on float planes
with align-corners sampling (source = destination x (in - 1) / (out - 1)), while OpenCV's ``INTER_LINEAR``
samples pixel centres on uint8 with fixed-point weights. On real photos they differ by several grey levels per
pixel, which a Darknet-trained detector sees. ``"darknet"`` reproduces Darknet's float32 arithmetic (equal to
float rounding); ``"opencv"`` is the faster approximation.

The pipeline is Darknet's ``load_image_color`` + ``letterbox_image``: uint8 / 255 to float32 planes (C, H, W),
resize to :func:`yolov2.boxes.letterbox_params`' (new_w, new_h), paste at its (pad_x, pad_y) on a canvas
of exactly 0.5 (:func:`letterbox_tensor`).

The training and validation batches use the other letterbox, ``yolov2.data.transforms.letterbox``: same geometry
(:func:`yolov2.boxes.letterbox_params`), same grey (:data:`LETTERBOX_FILL_UINT8`), but on uint8 arrays with
OpenCV's resize, written into a batch slot, boxes mapped along.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np
import torch

from yolov2.boxes import letterbox_params

__all__ = [
    "Resize",
    "RESIZE_MODES",
    "LETTERBOX_FILL",
    "LETTERBOX_FILL_UINT8",
    "to_planes",
    "darknet_resize",
    "letterbox_tensor",
    "plain_resize_tensor",
    "images_to_tensor",
]

Resize = Literal["darknet", "opencv"]
RESIZE_MODES: tuple[Resize, ...] = ("darknet", "opencv")
LETTERBOX_FILL = 0.5  # Darknet's fill_image(boxed, .5): the canvas of letterbox_tensor
LETTERBOX_FILL_UINT8 = 127  # the same grey on uint8 images (0.5 * 255 truncated): yolov2.data.transforms.letterbox


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected a uint8 RGB image (numpy H x W x 3), got {kind}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected a non-empty H x W x 3 RGB image, got shape {image.shape}")


def _check_resize(resize: str) -> None:
    if resize not in RESIZE_MODES:
        raise ValueError(f"unknown resize {resize!r}: expected one of {', '.join(map(repr, RESIZE_MODES))}")


def to_planes(image: np.ndarray) -> torch.Tensor:
    """uint8 RGB [H, W, 3] -> float32 (3, H, W) = value / 255, bit-equal to Darknet's ``(float)v / 255.``
    (checked for all 256 values: the float32 division rounds like the double one)."""
    _check_image(image)
    return torch.from_numpy(image).permute(2, 0, 1).to(torch.float32).div_(255.0)


def _samples(size_in: int, size_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Darknet's sampling along one axis: (index, index + 1 clamped, fraction), all as ``resize_image`` computes
    them in float32: scale = (float)(in - 1) / (out - 1), s = i * scale, index = (int)s, fraction = s - index.

    For ``size_out == 1`` Darknet divides by zero; the scale is 0 here (see :func:`darknet_resize`).
    """
    if size_out == 1:
        scale = torch.zeros((), dtype=torch.float32)
    else:
        scale = torch.tensor(size_in - 1, dtype=torch.float32) / torch.tensor(size_out - 1, dtype=torch.float32)
    s = torch.arange(size_out, dtype=torch.float32) * scale
    index = s.to(torch.int64)  # truncation, as the C cast (s >= 0)
    frac = s - index.to(torch.float32)
    return index, (index + 1).clamp_(max=size_in - 1), frac


def darknet_resize(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """float32 (C, H, W) -> (C, height, width), Darknet's ``resize_image`` vectorised, same float32 operations in
    the same order, so the result equals Darknet's to float rounding.

    Horizontal pass first into (C, H, width): (1 - dx) * left + dx * right, except the last output column (and
    every column when W == 1), which is the last source column. Then the vertical pass: (1 - dy) * upper, then
    plus dy * lower, except on the last output row (and every row when H == 1), which keeps only the first term.
    Kept as Darknet has it: where (height - 1) * scale rounds just below H - 1 (about 4% of (H, height) pairs,
    e.g. 465 -> 312), that row is (1 - dy) * row H - 2 with dy ~ 1, nearly black.

    Output width or height 1: Darknet's scale (in - 1) / (out - 1) divides by zero. For width 1 that is harmless
    (its only column is the last source column, as Darknet gives); for height 1 Darknet reads row (int)NaN, an
    undefined read, so the scale is taken as 0 and the row is the first source row.
    """
    if not isinstance(image, torch.Tensor) or image.dtype != torch.float32 or image.ndim != 3:
        raise ValueError(
            f"expected a float32 (C, H, W) tensor, got {getattr(image, 'dtype', type(image).__name__)} "
            f"of shape {tuple(getattr(image, 'shape', ()))}"
        )
    if width < 1 or height < 1:
        raise ValueError(f"output size must be at least 1 x 1, got {width} x {height}")
    _, h_in, w_in = image.shape
    if h_in == 0 or w_in == 0:
        raise ValueError(f"cannot resize an empty image of shape {tuple(image.shape)}")

    ix, ix1, dx = _samples(w_in, width)
    part = (1 - dx) * image.index_select(2, ix) + dx * image.index_select(2, ix1)
    part[:, :, -1] = image[:, :, -1]
    if w_in == 1:
        part[:] = image[:, :, -1:]

    iy, iy1, dy = _samples(h_in, height)
    out = (1 - dy)[:, None] * part.index_select(1, iy)
    if h_in > 1 and height > 1:
        rows = slice(0, height - 1)
        out[:, rows] += dy[rows, None] * part.index_select(1, iy1[rows])
    return out


def _resized(image: np.ndarray, width: int, height: int, resize: Resize) -> torch.Tensor:
    _check_resize(resize)
    _check_image(image)
    if resize == "darknet":
        return darknet_resize(to_planes(image), width, height)
    return to_planes(cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR))


def letterbox_tensor(image: np.ndarray, input_w: int, input_h: int, resize: Resize = "darknet") -> torch.Tensor:
    """uint8 RGB [H, W, 3] -> float32 (3, input_h, input_w) in [0, 1]: Darknet's ``letterbox_image``.

    The image keeps its aspect, resized to :func:`yolov2.boxes.letterbox_params`' size and pasted at its
    padding (the geometry the postprocess inverts) on a canvas of exactly 0.5. An image so elongated that one
    side rounds down to 0 pixels leaves the plain canvas, as in Darknet.
    """
    _check_resize(resize)
    _check_image(image)
    p = letterbox_params(image.shape[1], image.shape[0], input_w, input_h)
    canvas = torch.full((3, input_h, input_w), LETTERBOX_FILL, dtype=torch.float32)
    if p.new_w > 0 and p.new_h > 0:
        canvas[:, p.pad_y : p.pad_y + p.new_h, p.pad_x : p.pad_x + p.new_w] = _resized(image, p.new_w, p.new_h, resize)
    return canvas


def plain_resize_tensor(image: np.ndarray, input_w: int, input_h: int, resize: Resize = "darknet") -> torch.Tensor:
    """uint8 RGB [H, W, 3] -> float32 (3, input_h, input_w) in [0, 1], stretched to the input (no letterbox):
    what Darknet's ``load_image_color(path, w, h)`` gives."""
    return _resized(image, input_w, input_h, resize)


def images_to_tensor(
    images: Sequence[np.ndarray], input_size: int, letterbox: bool, resize: Resize = "darknet"
) -> torch.Tensor:
    """RGB uint8 images of any sizes -> float32 Tensor[B, 3, S, S] in [0, 1], letterboxed or stretched."""
    _check_resize(resize)
    prepare = letterbox_tensor if letterbox else plain_resize_tensor
    if not images:
        return torch.empty((0, 3, input_size, input_size), dtype=torch.float32)
    return torch.stack([prepare(im, input_size, input_size, resize) for im in images])
