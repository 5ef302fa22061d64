"""One batch format for both ingestion paths: :class:`Batch`, built by :func:`collate`, fed by :func:`to_model_input`.

Images travel as uint8 (4x less to copy between processes and to the device) in NHWC memory exposed as a
(B, 3, S, S) tensor, i.e. ``channels_last``; :func:`to_model_input` makes the float [0, 1] input on the device.
Targets are :func:`yolov2.boxes.targets_from_boxes`'s padded (B, T, 5) ``[label, cx, cy, w, h]``, normalised to the
network input, label -1 for padding rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from yolov2.boxes import targets_from_boxes
from yolov2.data.color import color_params, darknet_color_tensor
from yolov2.data.records import ImageRecord

__all__ = ["Batch", "record_targets", "collate", "to_model_input"]


class Batch(NamedTuple):
    """One batch, at one input size S.

    images (Tensor[B, 3, S, S] uint8, RGB, channels_last memory); targets (Tensor[B, T, 5] float32) rows
    ``[label, cx, cy, w, h]`` normalised to the input, label -1 = padding; image_ids (list[str]); orig_sizes
    (Tensor[B, 2] int64) original (width, height); repeated (Tensor[B] bool) samples repeated to even out ranks
    (count them once in metrics); index: the batch's position in this rank's epoch stream; color (Tensor[B, 3]
    float32 ``(dhue, dsat, dexp)``) the colour distortion still to apply on the device, or None; class_only
    (Tensor[B] bool) YOLO9000's classification-only images (their targets row 0 holds the label), or None if none.
    """

    images: torch.Tensor
    targets: torch.Tensor
    image_ids: list[str]
    orig_sizes: torch.Tensor
    repeated: torch.Tensor
    index: int  # type: ignore[assignment]  # shadows tuple.index; the field name is public API (tests, pipelines)
    color: torch.Tensor | None = None
    class_only: torch.Tensor | None = None


def record_targets(record: ImageRecord, keep_difficult: bool) -> tuple[np.ndarray, np.ndarray]:
    """Training boxes (float32[K, 4] xyxy pixels) and labels of a record, difficult/crowd boxes dropped unless kept."""
    if keep_difficult:
        return record.boxes, record.labels.astype(np.int64)
    keep = ~(record.difficult | record.iscrowd)
    return record.boxes[keep], record.labels[keep].astype(np.int64)


def collate(
    images: np.ndarray,
    boxes: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    image_ids: Sequence[str],
    orig_sizes: Sequence[tuple[int, int]],
    repeated: Sequence[bool],
    index: int = 0,
    colors: Sequence[Any] | None = None,
    class_only: Sequence[bool] | None = None,
) -> Batch:
    """A :class:`Batch` from images uint8[B, S_h, S_w, 3] RGB (the samples were written into it in place) and
    per-image boxes float32[K_i, 4] xyxy pixels of the input with labels int[K_i] (-> normalised targets).
    ``colors``: per-image deferred ``ColorJitter`` (or None each); all None -> ``Batch.color`` is None.
    ``class_only``: per image; none set -> ``Batch.class_only`` is None."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"collate: images must be uint8 (B, H, W, 3), got {images.dtype} {images.shape}")
    if not len(images) == len(boxes) == len(labels) == len(image_ids) == len(orig_sizes) == len(repeated):
        raise ValueError("collate: images, boxes, labels, image_ids, orig_sizes and repeated differ in length")
    height, width = images.shape[1:3]
    targets = targets_from_boxes(
        [
            (torch.from_numpy(np.asarray(b, np.float32)), torch.from_numpy(np.asarray(lab)))
            for b, lab in zip(boxes, labels)
        ],
        width,
        height,
    )
    return Batch(
        images=torch.from_numpy(images).permute(0, 3, 1, 2),
        targets=targets,
        image_ids=list(image_ids),
        orig_sizes=torch.tensor(np.asarray(orig_sizes, np.int64).reshape(-1, 2)),
        repeated=torch.tensor(list(repeated), dtype=torch.bool),
        index=index,
        color=color_params(colors) if colors is not None and any(c is not None for c in colors) else None,
        class_only=torch.tensor(list(class_only), dtype=torch.bool) if class_only and any(class_only) else None,
    )


def to_model_input(
    images: torch.Tensor,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    color: torch.Tensor | None = None,
) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> ``dtype`` in [0, 1] on ``device``; the uint8 copy to the device is the cheap one.

    ``color`` (``Batch.color``): apply the deferred Darknet colour distortion there, in float32
    (:func:`yolov2.data.color.darknet_color_tensor`). The memory format (channels_last) is kept.
    """
    x = images.to(device, non_blocking=True)
    if color is None:
        return x.to(dtype).div_(255)
    x = darknet_color_tensor(x.float().div_(255), color.to(x.device))
    return x.to(dtype, memory_format=torch.channels_last) if images.dim() == 4 else x.to(dtype)
