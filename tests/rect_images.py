"""Synthetic images of filled rectangles for the transform tests (tests/data/test_transforms.py, test_color.py,
test_mosaic.py, test_albumentations_ops.py).

Rectangles of distinct colours, kept 3+ px from the image border, so edge replication only repeats background;
after a transform each output box must tightly enclose the pixels of its colour.
"""

from __future__ import annotations

import numpy as np

COLOURS = [
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
    (0, 255, 255),
    (255, 0, 255),
    (255, 128, 0),
    (128, 0, 255),
]


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
