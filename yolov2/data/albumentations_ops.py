"""Darknet's training transform as albumentations transforms, to combine with any other albumentations transform.

:class:`DarknetCropResize` and :class:`DarknetHSV` wrap the same building blocks the loader calls directly
(:mod:`yolov2.data.transforms`, :mod:`yolov2.data.color`); :func:`darknet_compose` is the whole recipe as an
``A.Compose``. Nothing in the training path imports this module: the loader does not go through ``A.Compose``
because its per-call box bookkeeping measured about 0.4-0.6 ms per sample here, a third of the decode+resize
budget, and albumentations itself takes time to import.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np

from yolov2.boxes import DARKNET_MIN_BOX, map_boxes
from yolov2.data.color import ColorJitter, darknet_color, sample_color_jitter
from yolov2.data.transforms import CropWindow, crop_placement, crop_resize, placement_affine, sample_crop_window

__all__ = ["DarknetCropResize", "DarknetHSV", "darknet_compose"]


class DarknetCropResize(A.DualTransform):
    """Albumentations wrapper of Darknet's jitter crop + resize (:func:`sample_crop_window`, :func:`crop_resize`).

    Boxes arrive and leave in albumentations' normalised xyxy, relative to the input and output image.
    """

    def __init__(self, width: int, height: int, jitter: float = 0.3, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.width, self.height, self.jitter = width, height, jitter

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        return {"window": sample_crop_window(w, h, self.jitter, self.random_generator)}

    def apply(self, img: np.ndarray, window: CropWindow, **params: Any) -> np.ndarray:
        return crop_resize(img, window, self.width, self.height)[0]

    def apply_to_bboxes(self, bboxes: np.ndarray, window: CropWindow, **params: Any) -> np.ndarray:
        h, w = params["shape"][:2]
        affine = placement_affine(*crop_placement(w, h, window, self.width, self.height))
        out = bboxes.copy()
        pixels = bboxes[:, :4] * np.array([w, h, w, h], np.float32)
        out[:, :4] = map_boxes(pixels, affine) / np.array([self.width, self.height] * 2, np.float32)
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("width", "height", "jitter")


class DarknetHSV(A.ImageOnlyTransform):
    """Albumentations wrapper of Darknet's HSV distortion (:func:`sample_color_jitter`, :func:`darknet_color`).

    Input and output channel order are RGB.
    """

    def __init__(self, hue: float = 0.1, saturation: float = 1.5, exposure: float = 1.5, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.hue, self.saturation, self.exposure = hue, saturation, exposure

    def get_params(self) -> dict[str, Any]:
        return {"jitter": sample_color_jitter(self.hue, self.saturation, self.exposure, self.random_generator)}

    def apply(self, img: np.ndarray, jitter: ColorJitter, **params: Any) -> np.ndarray:
        return darknet_color(img, jitter)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("hue", "saturation", "exposure")


def darknet_compose(
    size: int,
    jitter: float = 0.3,
    hue: float = 0.1,
    saturation: float = 1.5,
    exposure: float = 1.5,
    min_visibility: float = 0.0,
    seed: int | None = None,
    save_applied_params: bool = False,
) -> A.Compose:
    """Darknet's recipe as an ``A.Compose`` (RGB in, RGB out; boxes ``pascal_voc`` with a ``labels`` field).

    Equivalent to :func:`darknet_augment` given the same draws; use it to add other albumentations transforms.
    Boxes narrower than Darknet's 0.001 of the input are dropped through ``min_width``/``min_height``.
    """
    return A.Compose(
        [
            DarknetCropResize(size, size, jitter),
            A.HorizontalFlip(p=0.5),
            DarknetHSV(hue, saturation, exposure),
        ],
        bbox_params=A.BboxParams(
            format="pascal_voc",
            label_fields=["labels"],
            min_visibility=min_visibility,
            min_width=DARKNET_MIN_BOX * size,
            min_height=DARKNET_MIN_BOX * size,
            clip=True,
        ),
        seed=seed,
        save_applied_params=save_applied_params,
    )
