"""Mosaic and mixup: samples built from several training images (off by default; ``Augmentation.mosaic/mixup``).

Each part goes through Darknet's crop + flip (:func:`yolov2.data.transforms.darknet_geometry`) straight to its
place; boxes are float32[K, 4] xyxy pixels of the output, images uint8[H, W, 3] RGB.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from yolov2.data.color import darknet_color, sample_color_jitter
from yolov2.data.transforms import Augmented, darknet_geometry, mirror, output_buffer

__all__ = ["mosaic4", "mixup"]


def mosaic4(
    images: Sequence[np.ndarray],
    boxes: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    size: int,
    rng: np.random.Generator,
    jitter: float = 0.3,
    hue: float = 0.1,
    saturation: float = 1.5,
    exposure: float = 1.5,
    min_visibility: float = 0.0,
    defer_color: bool = False,
    out: np.ndarray | None = None,
) -> Augmented:
    """Four RGB images in the four quadrants of a ``size x size`` canvas split at a random centre in [0.25, 0.75].

    Each image gets Darknet's crop + flip straight to its quadrant's size (one resize per image), boxes are
    clipped to their quadrant; one colour distortion for the whole canvas (or deferred, as in
    :func:`darknet_augment`).
    """
    if len(images) != 4:
        raise ValueError(f"mosaic4 needs 4 images, got {len(images)}")
    cx, cy = (int(round(v * size)) for v in rng.uniform(0.25, 0.75, 2).tolist())
    canvas = output_buffer(out, size, size, images[0])
    all_boxes, all_labels = [], []
    quadrants = ((0, 0, cx, cy), (cx, 0, size, cy), (0, cy, cx, size), (cx, cy, size, size))
    for (x0, y0, x1, y1), img, bxs, lbs in zip(quadrants, images, boxes, labels):
        quadrant = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        part, flipped = darknet_geometry(img, bxs, lbs, x1 - x0, y1 - y0, jitter, True, min_visibility, rng, quadrant)
        canvas[y0:y1, x0:x1] = mirror(part.image, flipped)
        all_boxes.append(part.boxes + np.array([x0, y0, x0, y0], np.float32))
        all_labels.append(part.labels)
    color = sample_color_jitter(hue, saturation, exposure, rng)
    if not defer_color:
        darknet_color(canvas, color, out=canvas)
    return Augmented(canvas, np.concatenate(all_boxes), np.concatenate(all_labels), color if defer_color else None)


def mixup(
    first: Augmented, second: Augmented, rng: np.random.Generator, alpha: float = 32.0, out: np.ndarray | None = None
) -> Augmented:
    """Blend two same-size samples with ``lam ~ Beta(alpha, alpha)`` (YOLOv5's 32: near 0.5); boxes of both kept.

    A deferred colour distortion of ``first`` applies to the blend; ``second``'s must already be applied or is
    dropped (colour is per image, the blend is one image).
    """
    if first.image.shape != second.image.shape:
        raise ValueError(f"mixup needs images of one shape, got {first.image.shape} and {second.image.shape}")
    lam = float(rng.beta(alpha, alpha))
    image = cv2.addWeighted(first.image, lam, second.image, 1.0 - lam, 0.0, dst=out)
    return Augmented(
        image, np.concatenate([first.boxes, second.boxes]), np.concatenate([first.labels, second.labels]), first.color
    )
