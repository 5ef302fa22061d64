"""What happens to each training sample: the options (:class:`Augmentation`), the multi-scale input size
(:class:`MultiScaleSchedule`) and the per-sample recipe both ingestion paths share (:func:`augment_sample`).

Multi-scale: the size of optimizer step ``i`` is a pure function of ``(seed, i // every)``, so every rank picks
the same size with no communication; each batch is built directly at its step's size (Darknet resizes each image
once, straight to the current network size).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from yolov2.config import AugmentConfig
from yolov2.data.batch import record_targets
from yolov2.data.images import decode_rgb
from yolov2.data.mosaic import mixup, mosaic4
from yolov2.data.shards import RawSample
from yolov2.data.transforms import Augmented, darknet_augment
from yolov2.errors import ConfigError

__all__ = ["Augmentation", "MultiScaleSchedule", "augment_raw", "augment_sample"]


@dataclass(frozen=True)
class Augmentation:
    """What happens to each training image: the configured recipe (:class:`~yolov2.config.AugmentConfig`, whose
    defaults are yolov2-voc.cfg's) and what the run decides around it.

    ``augment="none"`` in the recipe turns everything off (no jitter, colour, flip, mosaic or mixup): the
    properties below give the values the samplers use. ``keep_difficult=False`` leaves VOC ``difficult`` and COCO
    ``iscrowd`` boxes out of the batch targets (training and validation loss alike), as Darknet's
    ``voc_label.py`` does; mAP evaluation takes its ground truth, with the flags, from the records instead.
    ``device_color=True`` draws the HSV distortion in the loader but applies it on the device
    (``Batch.color`` -> :func:`yolov2.data.batch.to_model_input`): the fast choice for GPU training (module
    docstring of :mod:`yolov2.data.color`); False applies it on the CPU in the loader. ``min_visibility``: boxes
    keeping less of their area after the crop are dropped (0: Darknet's rule, only boxes cropped away entirely).
    """

    config: AugmentConfig = field(default_factory=AugmentConfig)
    keep_difficult: bool = False
    device_color: bool = False
    min_visibility: float = 0.0

    @classmethod
    def from_config(cls, config: AugmentConfig, device_color: bool) -> Augmentation:
        """The training recipe; ``device_color`` (training on GPUs) only where there is colour to apply."""
        return cls(config, device_color=device_color and config.augment != "none")

    @property
    def enabled(self) -> bool:
        return self.config.augment != "none"

    @property
    def jitter(self) -> float:
        return self.config.jitter if self.enabled else 0.0

    @property
    def hue(self) -> float:
        return self.config.hue if self.enabled else 0.0

    @property
    def saturation(self) -> float:
        return self.config.saturation if self.enabled else 1.0

    @property
    def exposure(self) -> float:
        return self.config.exposure if self.enabled else 1.0

    @property
    def flip(self) -> bool:
        return self.enabled

    @property
    def mosaic(self) -> float:
        return self.config.mosaic if self.enabled else 0.0

    @property
    def mixup(self) -> float:
        return self.config.mixup if self.enabled else 0.0


@dataclass(frozen=True)
class MultiScaleSchedule:
    """Darknet's ``random=1``: a new square input size every ``every`` optimizer steps.

    The size of step ``i`` depends only on ``(seed, i // every)``: ranks agree without talking to each other.
    Sizes are ``min_size, min_size + step, ..., max_size`` (Darknet: 320..608 by 32, every 10 batches).
    """

    min_size: int = 320
    max_size: int = 608
    step: int = 32
    every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.step <= 0 or self.every <= 0 or self.min_size <= 0 or self.max_size < self.min_size:
            raise ConfigError(f"invalid multi-scale schedule {self}: need 0 < min <= max, step > 0, every > 0")
        if (self.max_size - self.min_size) % self.step:
            raise ConfigError(f"multi-scale max {self.max_size} - min {self.min_size} is not a multiple of {self.step}")

    @property
    def sizes(self) -> list[int]:
        return list(range(self.min_size, self.max_size + 1, self.step))

    def size_at(self, step: int) -> int:
        """The input side for optimizer step ``step`` (0-based)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        period_rng = np.random.default_rng([self.seed, step // self.every])
        return self.sizes[int(period_rng.integers(len(self.sizes)))]

    @classmethod
    def from_config(cls, train_cfg: Any) -> MultiScaleSchedule | None:
        """None when ``multiscale`` is off (the loader then uses ``input_size``)."""
        if not train_cfg.multiscale:
            return None
        lo, hi, step = train_cfg.multiscale_sizes
        return cls(lo, hi, step, train_cfg.multiscale_every, train_cfg.seed)


def augment_raw(
    raw: RawSample,
    partners: Sequence[RawSample],
    size: int,
    aug: Augmentation,
    rng: np.random.Generator,
    out: np.ndarray | None = None,
) -> Augmented:
    """Decode and augment one training sample (Darknet's recipe, or mosaic with 3 partners, then maybe mixup).

    Partners are other raw samples of the stream (the current one stands in when there are none). ``out``: the
    (size, size, 3) slot of the batch array to write into.
    """

    def decode(r: RawSample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (decode_rgb(r.image_bytes, r.source),) + record_targets(r.record, aug.keep_difficult)

    def pick() -> RawSample:
        return partners[int(rng.integers(len(partners)))] if partners else raw

    return augment_sample(decode, raw, pick, size, aug, rng, out)


def augment_sample(
    decode: Callable[[Any], tuple[np.ndarray, np.ndarray, np.ndarray]],
    first: Any,
    pick: Callable[[], Any],
    size: int,
    aug: Augmentation,
    rng: np.random.Generator,
    out: np.ndarray | None,
) -> Augmented:
    """The sample-level recipe shared by both ingestion paths; ``decode(item) -> (rgb, boxes, labels)``,
    ``pick() -> item`` draws a partner for mosaic/mixup."""

    def plain(item: Any, target: np.ndarray | None) -> Augmented:
        image, boxes, labels = decode(item)
        return darknet_augment(
            image,
            boxes,
            labels,
            size,
            rng,
            aug.jitter,
            aug.hue,
            aug.saturation,
            aug.exposure,
            aug.flip,
            aug.min_visibility,
            aug.device_color,
            out=target,
        )

    if aug.mosaic > 0 and rng.random() < aug.mosaic:
        group = [decode(item) for item in (first, pick(), pick(), pick())]
        sample = mosaic4(
            [g[0] for g in group],
            [g[1] for g in group],
            [g[2] for g in group],
            size,
            rng,
            aug.jitter,
            aug.hue,
            aug.saturation,
            aug.exposure,
            aug.min_visibility,
            aug.device_color,
            out=out,
        )
    else:
        sample = plain(first, out)
    if aug.mixup > 0 and rng.random() < aug.mixup:
        sample = mixup(sample, plain(pick(), None), rng, out=sample.image)
    return sample
