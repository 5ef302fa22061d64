"""The cluster path: pure functions over NumPy row batches, for Ray Data's ``map_batches`` (this module never
imports Ray), and their conversion to :class:`~yolov2.data.batch.Batch` in the trainer.

:func:`decode_and_augment_batch` decodes and augments ``read_webdataset`` rows; :func:`batch_from_numpy` turns
its output into a :class:`~yolov2.data.batch.Batch`, resized there to the step's multi-scale size
(:func:`iter_row_batches`), since the map runs before the step is known. Training draws come from
``(seed, epoch, key)``, so they do not depend on how Ray groups rows into batches.
"""

from __future__ import annotations

import functools
import json
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import cv2
import numpy as np
import torch

from yolov2.boxes import targets_from_boxes
from yolov2.data.augment import Augmentation, augment_sample
from yolov2.data.batch import Batch, record_targets
from yolov2.data.images import decode_rgb
from yolov2.data.records import ImageRecord
from yolov2.data.transforms import eval_transform

__all__ = ["fresh_epoch", "decode_and_augment_batch", "batch_from_numpy", "resize_images", "iter_row_batches"]


def _sample_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    """Per-sample generator from (seed, epoch, key): reproducible however Ray groups samples into batches."""
    return np.random.default_rng([seed, epoch, zlib.crc32(key.encode())])


def _random_index(rng: np.random.Generator, n: int) -> int:
    return int(rng.integers(n))


def fresh_epoch() -> int:
    """A random stand-in for the epoch, for a pipeline that cannot know it (a Ray Data plan runs unchanged
    every epoch): new draws each time it runs, the same draws for every sample of one call."""
    return int(cast(int, np.random.SeedSequence().entropy) % (1 << 62))  # an int when drawn from the OS


def _as_rgb(image: Any, key: str) -> np.ndarray:
    """Encoded bytes -> RGB decode; an already decoded HWC array (Ray's default decoder gives RGB) -> uint8 RGB."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_rgb(bytes(image), key)
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.dtype != np.uint8:  # float in [0, 1] from some decoders
        array = np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array[:, :, :3])


def _as_record(meta: Any) -> ImageRecord:
    if isinstance(meta, (bytes, bytearray, str)):
        meta = json.loads(meta)
    return ImageRecord.from_dict(meta)


def decode_and_augment_batch(
    batch: dict[str, Any],
    size: int,
    seed: int = 0,
    epoch: int | None = 0,
    train: bool = True,
    augmentation: Augmentation | None = None,
    letterbox: bool = True,
) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches`` function (``batch_format="numpy"``) over ``read_webdataset`` rows.

    Input columns: ``__key__``, ``jpg`` (encoded bytes, or a decoded HWC RGB array) and ``json`` (the record as
    bytes/str/dict). Output columns: ``image`` uint8 (N, size, size, 3) RGB; ``boxes`` object array of float32
    (K, 5) rows ``[label, cx, cy, w, h]`` normalised to the input (so they survive a later resize of the
    batch); ``image_id`` (N,) str; ``orig_size`` int64 (N, 2) (width, height); ``color`` float32 (N, 3) the
    deferred colour draws ``(dhue, dsat, dexp)`` (identity rows when applied here); ``repeated`` bool (N,) passed
    through when the input has it (padding rows). Training draws come from ``(seed, epoch, key)``, with
    ``epoch=None`` from :func:`fresh_epoch` (new each call); mosaic/mixup partners come from the same batch.
    """
    if epoch is None:
        epoch = fresh_epoch()
    aug = augmentation or Augmentation()
    keys = [str(k) for k in batch["__key__"]]
    records = [_as_record(m) for m in batch["json"]]
    images = [_as_rgb(img, key) for img, key in zip(batch["jpg"], keys)]
    out_images = np.empty((len(keys), size, size, 3), np.uint8)
    out_boxes = np.empty(len(keys), dtype=object)
    out_color = np.tile(np.array([0.0, 1.0, 1.0], np.float32), (len(keys), 1))

    def decode(j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (images[j],) + record_targets(records[j], aug.keep_difficult)

    for i, key in enumerate(keys):
        if train:
            rng = _sample_rng(seed, epoch, key)
            pick = functools.partial(_random_index, rng, len(keys))  # a partner for mosaic/mixup: any row
            sample = augment_sample(decode, i, pick, size, aug, rng, out_images[i])
        else:
            sample = eval_transform(*decode(i), size, letterbox, out=out_images[i])
        rows = targets_from_boxes([(torch.from_numpy(sample.boxes), torch.from_numpy(sample.labels))], size, size)
        out_boxes[i] = rows[0].numpy()
        if sample.color is not None:
            out_color[i] = (sample.color.dhue, sample.color.dsat, sample.color.dexp)
    out = {
        "image": out_images,
        "boxes": out_boxes,
        "image_id": np.array([r.image_id for r in records], dtype=object),
        "orig_size": np.array([(r.width, r.height) for r in records], np.int64).reshape(-1, 2),
        "color": out_color,
    }
    if "repeated" in batch:
        out["repeated"] = np.asarray(batch["repeated"], bool)
    return out


def batch_from_numpy(batch: dict[str, Any], index: int = 0, size: int | None = None) -> Batch:
    """The output of :func:`decode_and_augment_batch` (one trainer batch of it) as a :class:`Batch`.

    ``size``: the input side this batch must have (the multi-scale step's, known only in the trainer): images of
    another side are resized to it here (targets are normalised, so they stay). ``Batch.color`` is None when every
    row is the identity (the colour step was applied on the CPU already).
    """
    images = np.ascontiguousarray(batch["image"], dtype=np.uint8)
    if size is not None and images.shape[1:3] != (size, size):
        images = resize_images(images, size)
    rows = [np.asarray(r, np.float32).reshape(-1, 5) for r in batch["boxes"]]
    width = max((len(r) for r in rows), default=0)
    targets = torch.full((len(rows), width, 5), -1.0, dtype=torch.float32)
    for i, r in enumerate(rows):
        targets[i, : len(r)] = torch.from_numpy(r)
    return Batch(
        images=torch.from_numpy(images).permute(0, 3, 1, 2),
        targets=targets,
        image_ids=[str(i) for i in batch["image_id"]],
        orig_sizes=torch.as_tensor(np.asarray(batch["orig_size"], np.int64).reshape(-1, 2)),
        repeated=torch.as_tensor(np.asarray(batch["repeated"], bool))
        if "repeated" in batch
        else torch.zeros(len(rows), dtype=torch.bool),
        index=index,
        color=_deferred_color(batch.get("color")),
    )


def _deferred_color(color: Any) -> torch.Tensor | None:
    if color is None:
        return None
    color = np.asarray(color, np.float32).reshape(-1, 3)
    return None if (color == np.array([0.0, 1.0, 1.0], np.float32)).all() else torch.from_numpy(color)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W, 3) -> (N, size, size, 3), bilinear (area when shrinking, as a downscale should)."""
    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, image in enumerate(images):
        shrink = image.shape[0] > size or image.shape[1] > size
        cv2.resize(image, (size, size), dst=out[i], interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out


def iter_row_batches(rows: Iterable[dict[str, Any]], size_of: Callable[[int], int]) -> Iterator[Batch]:
    """:class:`Batch` es from a rank's stream of :func:`decode_and_augment_batch` row batches (Ray Data's
    ``iter_batches`` of its dataset shard), the one at position p resized to ``size_of(p)``: the multi-scale
    size is chosen here, per batch, from the schedule every rank shares."""
    for position, batch in enumerate(rows):
        yield batch_from_numpy(batch, position, size_of(position))
