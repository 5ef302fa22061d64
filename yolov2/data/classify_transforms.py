"""Darknet's classifier augmentation (training Darknet-19 as a classifier) and its validation crop.

Training, Darknet's ``load_data_augment`` -> ``random_augment_image`` + ``random_distort_image``, per image:

1. **Draws.** ``aspect = rand_scale(aspect)``; the short side ``r`` uniform over the integers
   ``min_crop..max_crop``; an angle ``U(-angle, angle)`` degrees; the crop centre's offset ``dx = U(-d_x, d_x)``,
   ``dy = U(-d_y, d_y)`` from the resized image's centre, ``d = (resized side - size) / 2``.
2. **Geometry, one bilinear resample** (``rotate_crop_image``): the image is resized so its short side is ``r``
   after the aspect change (across by ``scale / aspect``, down by ``scale``, ``scale = r / min(H, W * aspect)``),
   rotated about its centre, and the ``size x size`` window around the offset centre is cut out. Where the
   window leaves the image (a short side below ``size``, or the rotated corners) the pixels are black, as
   Darknet's ``bilinear_interpolate`` reads zeros outside. Like Darknet we sample bilinearly without
   anti-aliasing, so a strong downscale aliases a little.
3. **Flip** left-right with probability 0.5, then **HSV distortion**: :mod:`yolov2.data.color` (hue shift
   ``U(-hue, hue)``, saturation and exposure scaled by ``rand_scale``), the detector's own code.

Validation, Darknet's ``validate_classifier_single``: resize the short side to ``size`` (``resize_min``, the long
side by integer division), then cut the centred ``size x size`` window (offsets by integer division).

Images are uint8[H, W, 3] RGB. :func:`augment_classifier_image` and :func:`center_crop_resize` give uint8[S, S, 3],
for loaders that batch as uint8 like the detector's; :func:`classifier_train_transform` and
:func:`classifier_val_transform` give the network input, float32 (3, S, S) in [0, 1]
(:func:`yolov2.preprocess.to_planes`, Darknet's ``v / 255``). All randomness comes from the
``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch

from yolov2.data.color import ColorJitter, darknet_color, rand_scale, sample_color_jitter
from yolov2.errors import ConfigError
from yolov2.preprocess import to_planes

__all__ = [
    "ClassifierAugment",
    "DARKNET19",
    "DARKNET19_448",
    "ClassifierDraw",
    "sample_classifier_draw",
    "resized_size",
    "classifier_affine",
    "apply_classifier_draw",
    "augment_classifier_image",
    "classifier_train_transform",
    "center_crop_resize",
    "classifier_val_transform",
]


@dataclass(frozen=True)
class ClassifierAugment:
    """Darknet's classifier augmentation; the defaults are ``darknet19.cfg``'s ``[net]`` section.

    ``size``: the network input side; ``min_crop``/``max_crop``: the range of the resized short side (pixels);
    ``angle``: the largest rotation (degrees). ``aspect``, ``saturation``, ``exposure`` are ``rand_scale``
    factors in the detector's convention (>= 1: ``U(1, s)``, inverted half the time). Darknet's cfg writes them
    as 0.75, and its ``rand_scale(.75)`` spans the same range [0.75, 4/3] (``U(.75, 1)`` or its inverse: the
    same support, the density within it slightly different). ``flip``: mirror half the images.
    """

    size: int = 256
    min_crop: int = 128
    max_crop: int = 448
    angle: float = 7.0
    aspect: float = 4 / 3
    hue: float = 0.1
    saturation: float = 4 / 3
    exposure: float = 4 / 3
    flip: bool = True

    def __post_init__(self) -> None:
        if self.size <= 0 or not 0 < self.min_crop <= self.max_crop:
            raise ConfigError(
                f"classifier augmentation needs size > 0 and 0 < min_crop <= max_crop; got size={self.size}, "
                f"min_crop={self.min_crop}, max_crop={self.max_crop}"
            )
        if not 0 <= self.angle < 180 or min(self.aspect, self.saturation, self.exposure) < 1 or self.hue < 0:
            raise ConfigError(
                "classifier augmentation needs 0 <= angle < 180, hue >= 0 and aspect, saturation, exposure >= 1 "
                f"(rand_scale factors); got {self}"
            )


DARKNET19 = ClassifierAugment()
# darknet19_448.cfg: width 448, max_crop 512, no min_crop (Darknet's parser then takes the width).
DARKNET19_448 = replace(DARKNET19, size=448, min_crop=448, max_crop=512)


@dataclass(frozen=True)
class ClassifierDraw:
    """One draw of the training augmentation (module docstring): ``aspect`` (the image is resized by
    ``scale / aspect`` across, ``scale`` down), ``short_side`` (``r``, pixels), ``angle`` (degrees, Darknet's sign),
    ``dx``/``dy`` (the crop centre's offset from the resized image's
    centre, resized pixels), ``flip``, ``color``."""

    aspect: float
    short_side: int
    angle: float
    dx: float
    dy: float
    flip: bool
    color: ColorJitter


def resized_size(width: int, height: int, aspect: float, short_side: int) -> tuple[float, float]:
    """(width, height) of a ``width x height`` image after Darknet's resize with aspect change: the short side of
    the result is ``short_side``; the width is divided by ``aspect`` relative to the height."""
    scale = short_side / min(height, width * aspect)
    return width * scale / aspect, height * scale


def sample_classifier_draw(
    width: int, height: int, settings: ClassifierAugment, rng: np.random.Generator
) -> ClassifierDraw:
    """Darknet's ``random_augment_args`` for a ``width x height`` image, then the flip and colour draws."""
    aspect = rand_scale(settings.aspect, rng)
    short_side = int(rng.integers(settings.min_crop, settings.max_crop + 1))
    angle = float(rng.uniform(-settings.angle, settings.angle)) if settings.angle > 0 else 0.0
    new_w, new_h = resized_size(width, height, aspect, short_side)
    # U(-d, d) whatever the sign of d: a resized side below ``size`` centres the window with jitter around it.
    dx = float(rng.uniform(-1.0, 1.0)) * (new_w - settings.size) / 2
    dy = float(rng.uniform(-1.0, 1.0)) * (new_h - settings.size) / 2
    flip = settings.flip and bool(rng.random() < 0.5)
    color = sample_color_jitter(settings.hue, settings.saturation, settings.exposure, rng)
    return ClassifierDraw(aspect, short_side, angle, dx, dy, flip, color)


def classifier_affine(width: int, height: int, draw: ClassifierDraw, size: int) -> np.ndarray:
    """The affine map (float64[2, 3]) from output pixel ``(x, y)`` of the ``size x size`` crop to the source
    pixel it samples in the ``width x height`` image: Darknet's ``rotate_crop_image`` (pixel indices, no half
    pixel shift), ``source = R(angle) @ ((x - size/2 + dx) * aspect / scale, (y - size/2 + dy) / scale) + centre``."""
    scale = draw.short_side / min(height, width * draw.aspect)
    rad = math.radians(draw.angle)
    cos, sin = math.cos(rad), math.sin(rad)
    ax, ay = draw.aspect / scale, 1.0 / scale  # output pixels -> source pixels, across and down
    ox, oy = (draw.dx - size / 2) * ax, (draw.dy - size / 2) * ay
    return np.array(
        [
            [cos * ax, -sin * ay, cos * ox - sin * oy + width / 2],
            [sin * ax, cos * ay, sin * ox + cos * oy + height / 2],
        ]
    )


def apply_classifier_draw(image: np.ndarray, draw: ClassifierDraw, size: int) -> np.ndarray:
    """The ``size x size`` uint8 crop that ``draw`` makes of ``image`` (uint8[H, W, 3] RGB): one bilinear warp
    (black outside the image), the flip, the HSV distortion."""
    _check_image(image)
    h, w = image.shape[:2]
    out = cv2.warpAffine(
        image,
        classifier_affine(w, h, draw, size),
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    if draw.flip:
        cv2.flip(out, 1, dst=out)
    return darknet_color(out, draw.color, out=out)


def augment_classifier_image(image: np.ndarray, settings: ClassifierAugment, rng: np.random.Generator) -> np.ndarray:
    """Darknet's classifier training augmentation of one uint8[H, W, 3] RGB image -> uint8[size, size, 3]."""
    _check_image(image)
    draw = sample_classifier_draw(image.shape[1], image.shape[0], settings, rng)
    return apply_classifier_draw(image, draw, settings.size)


def classifier_train_transform(
    image: np.ndarray, settings: ClassifierAugment, rng: np.random.Generator
) -> torch.Tensor:
    """:func:`augment_classifier_image` as the network input: float32 (3, size, size) in [0, 1]."""
    return to_planes(augment_classifier_image(image, settings, rng))


def center_crop_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Darknet's classifier validation crop of a uint8[H, W, 3] image: the short side resized to ``size``
    (bilinear; the long side ``long * size // short``), then the centred ``size x size`` window."""
    _check_image(image)
    if size <= 0:
        raise ValueError(f"size must be > 0, got {size}")
    h, w = image.shape[:2]
    new_w, new_h = (size, h * size // w) if w < h else (w * size // h, size)
    resized = image if (new_w, new_h) == (w, h) else cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.ascontiguousarray(resized[top : top + size, left : left + size])


def classifier_val_transform(image: np.ndarray, size: int) -> torch.Tensor:
    """:func:`center_crop_resize` as the network input: float32 (3, size, size) in [0, 1]."""
    return to_planes(center_crop_resize(image, size))


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        kind = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {kind}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"empty image {image.shape}")
