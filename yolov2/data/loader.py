"""Batches for training and evaluation: shard split per rank and worker, multi-scale sizes, collate.

Two ways in, one batch format (:class:`Batch`):

* **WebDataset shards on one node** (:class:`ShardStream`, a ``torch.utils.data.IterableDataset`` that yields whole
  batches; wrap it with :func:`make_dataloader`). Each epoch the shard order is shuffled from ``(seed, epoch)``
  and the samples, in that order, form one global sequence. It is padded to a multiple of ``world_size`` by
  repeating its first samples (as ``DistributedSampler`` does; repeats are flagged in ``Batch.repeated``), cut
  into ``world_size`` equal contiguous parts (one per rank), and each part into near-equal contiguous parts, one
  per DataLoader worker. So every sample is seen exactly once per epoch across all ranks and workers (plus the
  flagged repeats), every rank yields the same number of batches (DDP needs that), and a worker reads only the
  shards that overlap its part. Inside a worker a bounded shuffle buffer mixes the order.
* **Ray Data on a cluster**: :func:`decode_and_augment_batch` is a pure function for ``map_batches`` (this module
  never imports Ray) and :func:`batch_from_numpy` turns its output into a :class:`Batch` in the trainer, resized
  there to the step's multi-scale size (:func:`iter_row_batches`), since the map runs before the step is known.

Multi-scale (:class:`MultiScaleSchedule`): the size of optimizer step ``i`` is a pure function of
``(seed, i // every)``, so every rank picks the same size with no communication. A worker knows the position of
each of its batches in its rank's stream, because ``DataLoader`` (``in_order=True``, the default) takes batches
from its workers round-robin, skipping exhausted ones (:func:`round_robin_position`); so each batch is built
directly at its step's size (Darknet resizes each image once, straight to the current network size).

Images travel as uint8 (4x less to copy between processes and to the device) in NHWC memory exposed as a
(B, 3, S, S) tensor, i.e. ``channels_last``; :func:`to_model_input` makes the float [0, 1] input on the device.
Targets are ``yolov2.loss.targets_from_boxes``'s padded (B, T, 5) ``[label, cx, cy, w, h]``, normalised to the
network input, label -1 for padding rows.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import tarfile
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, NamedTuple

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from yolov2.data.records import ImageRecord
from yolov2.data.transforms import (
    Augmented,
    color_params,
    darknet_augment,
    darknet_color_tensor,
    decode_image,
    eval_transform,
    mixup,
    mosaic4,
)
from yolov2.errors import ConfigError, DatasetError
from yolov2.loss import targets_from_boxes

__all__ = [
    "ShardSpec",
    "Augmentation",
    "MultiScaleSchedule",
    "Batch",
    "shard_specs_from_index",
    "count_shard_samples",
    "epoch_shard_order",
    "rank_length",
    "slot_range",
    "worker_batch_counts",
    "batches_per_epoch",
    "round_robin_position",
    "read_samples",
    "shuffled",
    "collate",
    "to_model_input",
    "ShardStream",
    "make_dataloader",
    "decode_and_augment_batch",
    "batch_from_numpy",
    "fresh_epoch",
    "resize_images",
    "iter_row_batches",
]


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardSpec:
    """One tar shard and how many samples it holds (from the shard index, or :func:`count_shard_samples`)."""

    url: str
    num_samples: int


@dataclass(frozen=True)
class Augmentation:
    """What happens to each training image; the defaults are yolov2-voc.cfg's recipe.

    ``keep_difficult=False`` leaves VOC ``difficult`` and COCO ``iscrowd`` boxes out of the batch targets (training
    and validation loss alike), as Darknet's ``voc_label.py`` does; mAP evaluation takes its ground truth, with
    the flags, from the records instead. ``mosaic``/``mixup`` are probabilities per sample (0 = off).
    ``device_color=True`` draws the HSV distortion in the loader but applies it on the device
    (``Batch.color`` -> :func:`to_model_input`): the fast choice for GPU training (module docstring of
    ``transforms``); False applies it on the CPU in the loader.
    """

    jitter: float = 0.3
    hue: float = 0.1
    saturation: float = 1.5
    exposure: float = 1.5
    flip: bool = True
    min_visibility: float = 0.0
    mosaic: float = 0.0
    mixup: float = 0.0
    keep_difficult: bool = False
    device_color: bool = False

    @classmethod
    def from_config(cls, train_cfg: Any) -> "Augmentation":
        """From a ``TrainConfig``: ``augment="none"`` turns everything off; otherwise the configured values.

        The colour step goes to the device when training on GPUs (``use_gpu``).
        """
        if train_cfg.augment == "none":
            return cls(jitter=0.0, hue=0.0, saturation=1.0, exposure=1.0, flip=False)
        return cls(
            jitter=train_cfg.jitter, hue=train_cfg.hue, saturation=train_cfg.saturation,
            exposure=train_cfg.exposure, mosaic=train_cfg.mosaic, mixup=train_cfg.mixup,
            device_color=bool(train_cfg.use_gpu),
        )


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
    def from_config(cls, train_cfg: Any) -> "MultiScaleSchedule | None":
        """None when ``multiscale`` is off (the loader then uses ``input_size``)."""
        if not train_cfg.multiscale:
            return None
        lo, hi, step = train_cfg.multiscale_sizes
        return cls(lo, hi, step, train_cfg.multiscale_every, train_cfg.seed)


class Batch(NamedTuple):
    """One batch, at one input size S.

    images (Tensor[B, 3, S, S] uint8, RGB, channels_last memory); targets (Tensor[B, T, 5] float32) rows
    ``[label, cx, cy, w, h]`` normalised to the input, label -1 = padding; image_ids (list[str]); orig_sizes
    (Tensor[B, 2] int64) original (width, height); repeated (Tensor[B] bool) samples repeated to even out ranks
    (count them once in metrics); index: the batch's position in this rank's epoch stream; color (Tensor[B, 3]
    float32 ``(dhue, dsat, dexp)``) the colour distortion still to apply on the device, or None.
    """

    images: torch.Tensor
    targets: torch.Tensor
    image_ids: list[str]
    orig_sizes: torch.Tensor
    repeated: torch.Tensor
    index: int
    color: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------------
# Who reads what: pure arithmetic on sample positions
# ---------------------------------------------------------------------------------------------


def shard_specs_from_index(index: Any, shard_dir: str) -> list[ShardSpec]:
    """Shard specs from a shard stage index table (a ``pyarrow.Table`` with a ``shard`` column naming each
    record's shard file), sorted by shard name; urls are ``shard_dir/<shard>``."""
    names = index.column("shard").to_pylist()
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return [ShardSpec(f"{shard_dir.rstrip('/')}/{name}", counts[name]) for name in sorted(counts)]


def count_shard_samples(path: str) -> int:
    """Samples in a local tar shard (distinct keys with a ``.json`` member), reading member headers only."""
    with tarfile.open(path, "r:") as tar:
        return len({name.split(".", 1)[0] for name in tar.getnames() if name.endswith(".json")})


def epoch_shard_order(shards: Sequence[ShardSpec], seed: int, epoch: int, shuffle: bool = True) -> list[ShardSpec]:
    """The epoch's shard order: a permutation drawn from ``(seed, epoch)``, the same on every rank and worker."""
    if not shuffle:
        return list(shards)
    perm = np.random.default_rng([seed, epoch]).permutation(len(shards))
    return [shards[i] for i in perm]


def rank_length(total: int, world_size: int) -> int:
    """Samples per rank: ``ceil(total / world_size)`` (the global sequence is padded to ``world_size`` times it)."""
    return -(-total // world_size)


def slot_range(total: int, world_size: int, rank: int, num_workers: int, worker: int) -> tuple[int, int]:
    """Positions ``[start, stop)`` of the padded global sequence that (rank, worker) processes.

    Ranks take equal contiguous parts; a rank's part is split into ``num_workers`` contiguous parts whose sizes
    differ by at most one (the first workers take the extra). Positions >= ``total`` wrap to the start (repeats).
    """
    if not (0 <= rank < world_size and 0 <= worker < num_workers):
        raise ValueError(f"rank {rank}/{world_size} or worker {worker}/{num_workers} out of range")
    per_rank = rank_length(total, world_size)
    base, extra = divmod(per_rank, num_workers)
    start = rank * per_rank + worker * base + min(worker, extra)
    return start, start + base + (1 if worker < extra else 0)


def worker_batch_counts(per_rank: int, num_workers: int, batch_size: int, drop_last: bool = False) -> list[int]:
    """Batches each worker of a rank yields (identical on every rank, since ``per_rank`` is)."""
    base, extra = divmod(per_rank, num_workers)
    counts = []
    for worker in range(num_workers):
        n = base + (1 if worker < extra else 0)
        counts.append(n // batch_size if drop_last else -(-n // batch_size))
    return counts


def batches_per_epoch(
    total: int, world_size: int, batch_size: int, num_workers: int = 1, drop_last: bool = False
) -> int:
    """Batches per rank per epoch (the trainer's step arithmetic and the LR schedule need it)."""
    return sum(worker_batch_counts(rank_length(total, world_size), max(num_workers, 1), batch_size, drop_last))


def round_robin_position(counts: Sequence[int], worker: int, t: int) -> int:
    """Where worker ``worker``'s ``t``-th batch lands in the DataLoader's output.

    ``DataLoader`` (``in_order=True``) cycles over its workers and skips those that are exhausted, so the output
    is ordered by (round t, worker id): before it come ``min(c_v, t)`` batches of every worker v and one batch of
    each lower-numbered worker that still has a ``t``-th one.
    """
    return sum(min(c, t) for c in counts) + sum(1 for v in range(worker) if counts[v] > t)


class RawSample(NamedTuple):
    """A sample as read from a shard: encoded image bytes and its record; ``repeated`` marks padding repeats."""

    key: str
    image_bytes: bytes
    record: ImageRecord
    repeated: bool
    source: str


_MEMBER_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext: key, extensions
_IMAGE_EXTS = ("jpg", "jpeg", "png")


class _NotPlainTar(Exception):
    """A tar member our fast reader does not handle (pax/GNU headers, links, directories, huge sizes)."""


def _tar_members(f: BinaryIO, url: str) -> Iterator[tuple[str, bytes]]:
    """``(name, data)`` of the regular-file members of a plain ustar stream (what ``shards.TarShardWriter``
    writes). Header checksums are verified; anything else raises :class:`_NotPlainTar`."""
    while True:
        header = f.read(512)
        if len(header) < 512 or header[0] == 0:  # end-of-archive blocks (or a bare end)
            return
        stored = header[148:156].split(b"\0", 1)[0].strip()
        if not stored or int(stored, 8) != sum(header[:148]) + 256 + sum(header[156:]):
            raise DatasetError(f"{url}: corrupt tar header (checksum mismatch); re-write the shard")
        if header[156:157] not in (b"0", b"\0") or header[124] & 0x80:
            raise _NotPlainTar(header[156:157])
        name = header[:100].split(b"\0", 1)[0].decode("utf-8")
        size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        data = f.read(size)
        if len(data) != size:
            raise DatasetError(f"{url}: truncated tar member {name!r} ({len(data)} of {size} bytes)")
        f.seek(-size % 512, 1)
        yield name, data


def _samples_fast(url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Group consecutive members by key (webdataset's rule: the name up to the first dot of its file name)."""
    key, parts = None, {}
    with open(url, "rb") as f:
        for name, data in _tar_members(f, url):
            match = _MEMBER_NAME.match(name)
            if match is None:
                continue
            prefix, ext = match.group(1), match.group(2).lower()
            if prefix != key:
                if key is not None:
                    yield key, parts
                key, parts = prefix, {}
            parts[ext] = data
    if key is not None:
        yield key, parts


def _samples_webdataset(url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """The same through webdataset, with its own node/worker splitting turned off (we split by position; its
    defaults would drop shards inside DataLoader workers and raise under torch.distributed)."""
    import webdataset as wds

    dataset = wds.WebDataset(url, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False)
    for sample in dataset:
        yield sample["__key__"], {k: v for k, v in sample.items() if not k.startswith("__")}


def _iter_shard(url: str) -> Iterator[tuple[str, bytes, bytes]]:
    """``(key, image bytes, json bytes)`` of one shard, in file order.

    Local plain-ustar shards (ours) are read by a 30-line reader: webdataset's ``tarfile``-based reader costs
    about 100 us per sample here, a twentieth of the whole per-image budget, against about 25 us. Remote urls,
    and shards with members that reader does not handle, go through webdataset (picking up where it stopped).
    """
    done = 0
    samples: Iterator[tuple[str, dict[str, bytes]]]
    if "://" in url or url.startswith("pipe:"):
        samples = _samples_webdataset(url)
    else:
        samples = _samples_fast(url)
    try:
        for key, parts in samples:
            done += 1
            yield _sample_parts(url, key, parts)
    except _NotPlainTar:
        for index, (key, parts) in enumerate(_samples_webdataset(url)):
            if index >= done:
                yield _sample_parts(url, key, parts)


def _sample_parts(url: str, key: str, parts: dict[str, bytes]) -> tuple[str, bytes, bytes]:
    image = next((parts[e] for e in _IMAGE_EXTS if e in parts), None)
    if image is None or "json" not in parts:
        raise DatasetError(f"{url}: sample {key!r} lacks an image ({'/'.join(_IMAGE_EXTS)}) or its .json record")
    return key, image, parts["json"]


def read_samples(shards: Sequence[ShardSpec], start: int, stop: int) -> Iterator[RawSample]:
    """Samples at positions ``[start, stop)`` of the sequence made by ``shards`` in order (wrapping around).

    Only shards overlapping the range are opened; a shard is read from its start (tar has no index) and the
    samples before the range are skipped undecoded. ``ShardSpec.num_samples`` must be right: a mismatch raises
    :class:`DatasetError` naming the shard (it would silently break the exactly-once split).
    """
    total = sum(s.num_samples for s in shards)
    if stop <= start or total == 0:
        return
    offsets = np.cumsum([0] + [s.num_samples for s in shards])
    for lap in range(start // total, (stop - 1) // total + 1):
        lo, hi = max(start - lap * total, 0), min(stop - lap * total, total)
        for index, shard in enumerate(shards):
            first, last = int(offsets[index]), int(offsets[index + 1])
            if last <= lo or first >= hi:
                continue
            seen = 0
            for seen, (key, image, meta) in enumerate(_iter_shard(shard.url), start=1):
                position = first + seen - 1
                if position >= hi:
                    break
                if position >= lo:
                    record = ImageRecord.from_dict(json.loads(meta))
                    yield RawSample(key, image, record, lap > 0, f"{shard.url}:{key}")
            else:
                if seen != shard.num_samples:
                    raise DatasetError(
                        f"{shard.url}: holds {seen} samples but its index says {shard.num_samples}; "
                        "rebuild the shard index"
                    )


def shuffled(items: Iterator[Any], buffer_size: int, rng: np.random.Generator) -> Iterator[Any]:
    """A bounded shuffle buffer: fill ``buffer_size`` items, then emit a random one per item read."""
    if buffer_size <= 1:
        yield from items
        return
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        j = int(rng.integers(buffer_size))
        buffer[j], item = item, buffer[j]
        yield item
    while buffer:
        j = int(rng.integers(len(buffer)))
        buffer[j], buffer[-1] = buffer[-1], buffer[j]
        yield buffer.pop()


# ---------------------------------------------------------------------------------------------
# Samples -> batch
# ---------------------------------------------------------------------------------------------


def _record_targets(record: ImageRecord, keep_difficult: bool) -> tuple[np.ndarray, np.ndarray]:
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
) -> Batch:
    """A :class:`Batch` from images uint8[B, S_h, S_w, 3] RGB (the samples were written into it in place) and
    per-image boxes float32[K_i, 4] xyxy pixels of the input with labels int[K_i] (-> normalised targets).
    ``colors``: per-image deferred ``ColorJitter`` (or None each); all None -> ``Batch.color`` is None."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"collate: images must be uint8 (B, H, W, 3), got {images.dtype} {images.shape}")
    if not len(images) == len(boxes) == len(labels) == len(image_ids) == len(orig_sizes) == len(repeated):
        raise ValueError("collate: images, boxes, labels, image_ids, orig_sizes and repeated differ in length")
    height, width = images.shape[1:3]
    targets = targets_from_boxes(
        [(torch.from_numpy(np.asarray(b, np.float32)), torch.from_numpy(np.asarray(lab))) for b, lab in
         zip(boxes, labels)],
        width, height,
    )
    return Batch(
        images=torch.from_numpy(images).permute(0, 3, 1, 2),
        targets=targets,
        image_ids=list(image_ids),
        orig_sizes=torch.tensor(np.asarray(orig_sizes, np.int64).reshape(-1, 2)),
        repeated=torch.tensor(list(repeated), dtype=torch.bool),
        index=index,
        color=color_params(colors) if colors is not None and any(c is not None for c in colors) else None,
    )


def to_model_input(
    images: torch.Tensor,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    color: torch.Tensor | None = None,
) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> ``dtype`` in [0, 1] on ``device``; the uint8 copy to the device is the cheap one.

    ``color`` (``Batch.color``): apply the deferred Darknet colour distortion there, in float32
    (:func:`yolov2.data.transforms.darknet_color_tensor`). The memory format (channels_last) is kept.
    """
    x = images.to(device, non_blocking=True)
    if color is None:
        return x.to(dtype).div_(255)
    x = darknet_color_tensor(x.float().div_(255), color.to(x.device))
    return x.to(dtype, memory_format=torch.channels_last) if images.dim() == 4 else x.to(dtype)


# ---------------------------------------------------------------------------------------------
# The single-node path: WebDataset shards split by rank and worker
# ---------------------------------------------------------------------------------------------


class ShardStream(IterableDataset):
    """Yields :class:`Batch` es of this rank's share of the shards (module docstring); use ``batch_size=None``.

    Training (``train=True``): shard order and shuffle buffer from ``(seed, epoch)``, Darknet's augmentation,
    mosaic/mixup as configured, each batch at its multi-scale size (``schedule``; else ``size``). The size of the
    batch at position p of this rank's epoch stream is ``schedule.size_at((first_batch + p) // accumulation)``:
    pass ``first_batch`` = micro-batches before this epoch (``epoch * batches_per_epoch(...)`` for a fresh run),
    and ``accumulation`` = micro-batches per optimizer step. Evaluation (``train=False``): file order, letterbox
    (or plain resize) at ``size``, no randomness. Call :meth:`set_epoch` before each epoch (workers must not be
    persistent, so they pick it up).
    """

    def __init__(
        self,
        shards: Sequence[ShardSpec],
        batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        train: bool = True,
        size: int = 416,
        schedule: MultiScaleSchedule | None = None,
        augmentation: Augmentation = Augmentation(),
        seed: int = 0,
        shuffle_buffer: int = 256,
        drop_last: bool = False,
        first_batch: int = 0,
        accumulation: int = 1,
        letterbox: bool = True,
    ) -> None:
        super().__init__()
        if batch_size <= 0 or world_size <= 0 or not 0 <= rank < world_size or accumulation <= 0:
            raise ConfigError(
                f"ShardStream: need batch_size > 0, 0 <= rank < world_size, accumulation > 0; got batch_size="
                f"{batch_size}, rank={rank}, world_size={world_size}, accumulation={accumulation}"
            )
        bad = [s.url for s in shards if s.num_samples < 0]
        if bad:
            raise ConfigError(f"ShardStream: negative sample counts for {bad}")
        self.shards = list(shards)
        self.batch_size, self.world_size, self.rank = batch_size, world_size, rank
        self.train, self.size, self.schedule = train, size, schedule
        self.augmentation, self.seed, self.shuffle_buffer = augmentation, seed, shuffle_buffer
        self.drop_last, self.first_batch, self.accumulation = drop_last, first_batch, accumulation
        self.letterbox = letterbox
        self.epoch = 0

    @classmethod
    def from_config(
        cls, shards: Sequence[ShardSpec], train_cfg: Any, world_size: int = 1, rank: int = 0, train: bool = True,
        accumulation: int = 1,
    ) -> "ShardStream":
        """The training (or, ``train=False``, fixed-size validation) stream a ``TrainConfig`` describes."""
        return cls(
            shards, train_cfg.batch_size, world_size, rank, train=train, size=train_cfg.input_size,
            schedule=MultiScaleSchedule.from_config(train_cfg) if train else None,
            augmentation=Augmentation.from_config(train_cfg), seed=train_cfg.seed, accumulation=accumulation,
        )

    @property
    def total(self) -> int:
        return sum(s.num_samples for s in self.shards)

    def set_epoch(self, epoch: int, first_batch: int | None = None) -> None:
        """Select the epoch (shard order, shuffle, augmentation draws) and the run's micro-batch count before it."""
        self.epoch = epoch
        if first_batch is not None:
            self.first_batch = first_batch

    def batches_per_epoch(self, num_workers: int = 0) -> int:
        return batches_per_epoch(self.total, self.world_size, self.batch_size, max(num_workers, 1), self.drop_last)

    def size_of(self, position: int) -> int:
        """Input side of the batch at ``position`` in this rank's epoch stream."""
        if not self.train or self.schedule is None:
            return self.size
        return self.schedule.size_at((self.first_batch + position) // self.accumulation)

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        if info is None:
            return self.iter_slot(0, 1)
        cv2.setNumThreads(1)  # one worker process = one core
        return self.iter_slot(info.id, info.num_workers)

    def iter_slot(self, worker: int, num_workers: int) -> Iterator[Batch]:
        """The batches DataLoader worker ``worker`` of ``num_workers`` yields on this rank (``__iter__`` picks the
        slot from ``get_worker_info``; tests and single-process callers may call this directly)."""
        order = epoch_shard_order(self.shards, self.seed, self.epoch, shuffle=self.train)
        start, stop = slot_range(self.total, self.world_size, self.rank, num_workers, worker)
        counts = worker_batch_counts(
            rank_length(self.total, self.world_size), num_workers, self.batch_size, self.drop_last
        )
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker, num_workers])
        samples: Iterator[RawSample] = read_samples(order, start, stop)
        if self.train:
            samples = shuffled(samples, self.shuffle_buffer, rng)
        recent: deque[RawSample] = deque(maxlen=64)  # mosaic / mixup partners
        pending: list[RawSample] = []
        t = 0
        for raw in samples:
            pending.append(raw)
            if len(pending) == self.batch_size:
                yield self._batch(pending, round_robin_position(counts, worker, t), rng, recent)
                t += 1
                pending = []
        if pending and not self.drop_last:
            yield self._batch(pending, round_robin_position(counts, worker, t), rng, recent)

    def _batch(self, raws: list[RawSample], position: int, rng: np.random.Generator, recent: deque) -> Batch:
        size = self.size_of(position)
        images = np.empty((len(raws), size, size, 3), np.uint8)
        samples = []
        for i, raw in enumerate(raws):
            try:
                if self.train:
                    samples.append(augment_raw(raw, recent, size, self.augmentation, rng, out=images[i]))
                else:
                    boxes, labels = _record_targets(raw.record, self.augmentation.keep_difficult)
                    image = decode_image(raw.image_bytes)
                    samples.append(eval_transform(image, boxes, labels, size, self.letterbox, out=images[i]))
            except ValueError as e:
                raise DatasetError(f"{raw.source}: {e}") from e
            recent.append(raw)
        return collate(
            images,
            [s.boxes for s in samples],
            [s.labels for s in samples],
            [r.record.image_id for r in raws],
            [(r.record.width, r.record.height) for r in raws],
            [r.repeated for r in raws],
            index=position,
            colors=[s.color for s in samples],
        )


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
        return (decode_image(r.image_bytes),) + _record_targets(r.record, aug.keep_difficult)

    def pick() -> RawSample:
        return partners[int(rng.integers(len(partners)))] if partners else raw

    return _augment_one(decode, raw, pick, size, aug, rng, out)


def _augment_one(
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
        return darknet_augment(image, boxes, labels, size, rng, aug.jitter, aug.hue, aug.saturation, aug.exposure,
                               aug.flip, aug.min_visibility, aug.device_color, out=target)

    if aug.mosaic > 0 and rng.random() < aug.mosaic:
        group = [decode(item) for item in (first, pick(), pick(), pick())]
        sample = mosaic4([g[0] for g in group], [g[1] for g in group], [g[2] for g in group], size, rng,
                         aug.jitter, aug.hue, aug.saturation, aug.exposure, aug.min_visibility, aug.device_color,
                         out=out)
    else:
        sample = plain(first, out)
    if aug.mixup > 0 and rng.random() < aug.mixup:
        sample = mixup(sample, plain(pick(), None), rng, out=sample.image)
    return sample


def _worker_init(_: int) -> None:
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def make_dataloader(
    stream: ShardStream, num_workers: int = 0, pin_memory: bool = False, prefetch_factor: int = 2
) -> DataLoader:
    """A ``DataLoader`` over a :class:`ShardStream`: whole batches (``batch_size=None``), in order, workers
    re-created each epoch (so :meth:`ShardStream.set_epoch` reaches them), one thread each.

    Workers start from a fork server, not by forking this process: a process whose OpenCV or OpenMP
    thread pools are already running deadlocks when a forked child touches them (seen with
    ``cv2.setNumThreads`` in the child). The fork server preloads this module once, so starting the
    workers each epoch stays cheap.
    """
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["yolov2.data.loader"])
        kwargs.update(prefetch_factor=prefetch_factor, worker_init_fn=_worker_init, persistent_workers=False,
                      multiprocessing_context=context)
    return DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **kwargs)


# ---------------------------------------------------------------------------------------------
# The cluster path: pure functions for Ray Data's map_batches
# ---------------------------------------------------------------------------------------------


def _sample_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    """Per-sample generator from (seed, epoch, key): reproducible however Ray groups samples into batches."""
    return np.random.default_rng([seed, epoch, zlib.crc32(key.encode())])


def fresh_epoch() -> int:
    """A random stand-in for the epoch, for a pipeline that cannot know it (a Ray Data plan runs unchanged
    every epoch): new draws each time it runs, the same draws for every sample of one call."""
    return int(np.random.SeedSequence().entropy % (1 << 62))


def _as_rgb(image: Any) -> np.ndarray:
    """Encoded bytes -> RGB decode; an already decoded HWC array (Ray's default decoder gives RGB) -> uint8 RGB."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image(bytes(image))
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
    augmentation: Augmentation = Augmentation(),
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
    keys = [str(k) for k in batch["__key__"]]
    records = [_as_record(m) for m in batch["json"]]
    images = [_as_rgb(img) for img in batch["jpg"]]
    out_images = np.empty((len(keys), size, size, 3), np.uint8)
    out_boxes = np.empty(len(keys), dtype=object)
    out_color = np.tile(np.array([0.0, 1.0, 1.0], np.float32), (len(keys), 1))

    def decode(j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (images[j],) + _record_targets(records[j], augmentation.keep_difficult)

    for i, key in enumerate(keys):
        if train:
            rng = _sample_rng(seed, epoch, key)
            sample = _augment_one(decode, i, lambda: int(rng.integers(len(keys))), size, augmentation, rng,
                                  out_images[i])
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
        repeated=torch.as_tensor(np.asarray(batch["repeated"], bool)) if "repeated" in batch
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
