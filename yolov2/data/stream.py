"""Batches from WebDataset shards on one node: :class:`ShardStream`, a ``torch.utils.data.IterableDataset`` that
yields whole :class:`~yolov2.data.batch.Batch` es; wrap it with :func:`make_dataloader`.

Each epoch the shards are split by rank and worker by position (:mod:`yolov2.data.partition`): every sample is
seen exactly once per epoch across all ranks and workers (padding repeats are flagged in ``Batch.repeated``),
every rank yields the same number of batches, and a worker reads only the shards that overlap its part
(:func:`yolov2.data.shards.read_samples`). Inside a worker a bounded shuffle buffer (:func:`shuffled`) mixes
the order. Training batches are augmented (:mod:`yolov2.data.augment`), each at its multi-scale step's size;
validation batches are letterboxed (or resized) at one size.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from yolov2.data.augment import Augmentation, MultiScaleSchedule, augment_raw
from yolov2.data.batch import Batch, collate, record_targets
from yolov2.data.images import decode_rgb
from yolov2.data.partition import (
    batches_per_epoch,
    epoch_shard_order,
    rank_length,
    round_robin_position,
    slot_range,
    worker_batch_counts,
)
from yolov2.data.shards import RawSample, ShardSpec, read_samples
from yolov2.data.transforms import Augmented, eval_transform
from yolov2.errors import ConfigError, DatasetError

__all__ = ["ShardStream", "shuffled", "make_dataloader"]


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


class ShardStream(IterableDataset):
    """Yields :class:`Batch` es of this rank's share of the shards (module docstring); use ``batch_size=None``.

    Training (``train=True``): shard order and shuffle buffer from ``(seed, epoch)``, Darknet's augmentation,
    mosaic/mixup as configured, each batch at its multi-scale size (``schedule``; else ``size``). The size of the
    batch at position p of this rank's epoch stream is ``schedule.size_at((first_batch + p) // accumulation)``:
    pass ``first_batch`` = micro-batches before this epoch (``epoch * batches_per_epoch(...)`` for a fresh run),
    and ``accumulation`` = micro-batches per optimizer step. Evaluation (``train=False``): file order, letterbox
    (or plain resize) at ``size``, no randomness. Call :meth:`set_epoch` before each epoch (workers must not be
    persistent, so they pick it up).

    YOLO9000's classification-only samples (``class_only_shards``, training only) join each epoch's detection
    samples, ``class_only_ratio`` of them per detection sample: every (rank, worker) reads its slot of both
    sequences, interleaved at random, and the classification-only sequence continues cyclically from epoch to
    epoch, so each of its samples comes as often as the others.
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
        augmentation: Augmentation | None = None,
        seed: int = 0,
        shuffle_buffer: int = 256,
        drop_last: bool = False,
        first_batch: int = 0,
        accumulation: int = 1,
        letterbox: bool = True,
        class_only_shards: Sequence[ShardSpec] = (),
        class_only_ratio: float = 0.0,
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
        self.augmentation, self.seed, self.shuffle_buffer = augmentation or Augmentation(), seed, shuffle_buffer
        self.drop_last, self.first_batch, self.accumulation = drop_last, first_batch, accumulation
        self.letterbox = letterbox
        self.epoch = 0
        self.class_only_shards = epoch_shard_order(list(class_only_shards), seed, 0, shuffle=train)
        if class_only_ratio < 0 or (class_only_ratio > 0 and not sum(s.num_samples for s in class_only_shards)):
            raise ConfigError(
                f"ShardStream: class_only_ratio {class_only_ratio} needs classification-only samples (and >= 0)"
            )
        self.class_only_per_epoch = round(class_only_ratio * self.total) if train and class_only_shards else 0

    @classmethod
    def from_config(
        cls,
        shards: Sequence[ShardSpec],
        train_cfg: Any,
        world_size: int = 1,
        rank: int = 0,
        train: bool = True,
        accumulation: int = 1,
        class_only_shards: Sequence[ShardSpec] = (),
    ) -> ShardStream:
        """The training (or, ``train=False``, fixed-size validation) stream a ``TrainConfig`` describes."""
        return cls(
            shards,
            train_cfg.batch_size,
            world_size,
            rank,
            train=train,
            size=train_cfg.input_size,
            schedule=MultiScaleSchedule.from_config(train_cfg) if train else None,
            augmentation=Augmentation.from_config(train_cfg.augmentation, device_color=bool(train_cfg.use_gpu)),
            seed=train_cfg.seed,
            accumulation=accumulation,
            class_only_shards=class_only_shards,
            class_only_ratio=train_cfg.class_only_ratio if class_only_shards else 0.0,
        )

    @property
    def total(self) -> int:
        return sum(s.num_samples for s in self.shards)

    def set_epoch(self, epoch: int, first_batch: int | None = None) -> None:
        """Select the epoch (shard order, shuffle, augmentation draws) and the run's micro-batch count before it."""
        self.epoch = epoch
        if first_batch is not None:
            self.first_batch = first_batch

    @property
    def parts(self) -> list[int]:
        """The epoch's sample counts: detection, then classification-only when there are any."""
        return [self.total, self.class_only_per_epoch] if self.class_only_per_epoch else [self.total]

    def batches_per_epoch(self, num_workers: int = 0) -> int:
        return batches_per_epoch(self.parts, self.world_size, self.batch_size, max(num_workers, 1), self.drop_last)

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
            [rank_length(part, self.world_size) for part in self.parts], num_workers, self.batch_size, self.drop_last
        )
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker, num_workers])
        samples: Iterator[RawSample] = read_samples(order, start, stop)
        if self.class_only_per_epoch:
            samples = self._with_class_only(samples, stop - start, worker, num_workers, rng)
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

    def _with_class_only(
        self, detection: Iterator[RawSample], count: int, worker: int, num_workers: int, rng: np.random.Generator
    ) -> Iterator[RawSample]:
        """This slot's detection samples and its slot of the epoch's classification-only ones, interleaved."""
        per_epoch = self.class_only_per_epoch
        start, stop = slot_range(per_epoch, self.world_size, self.rank, num_workers, worker)
        offset = self.epoch * per_epoch  # the cycle goes on where the last epoch stopped
        class_only = read_samples(self.class_only_shards, offset + start, offset + stop)
        kinds = np.repeat([False, True], [count, stop - start])
        rng.shuffle(kinds)
        for is_class_only in kinds:
            yield next(class_only) if is_class_only else next(detection)

    def _batch(self, raws: list[RawSample], position: int, rng: np.random.Generator, recent: deque) -> Batch:
        size = self.size_of(position)
        images = np.empty((len(raws), size, size, 3), np.uint8)
        samples = []
        for i, raw in enumerate(raws):
            try:
                if self.train and raw.record.class_only:
                    samples.append(_class_only_sample(raw, size, self.augmentation, rng, images[i]))
                    continue  # never a mosaic or mixup partner
                if self.train:
                    samples.append(augment_raw(raw, recent, size, self.augmentation, rng, out=images[i]))
                else:
                    boxes, labels = record_targets(raw.record, self.augmentation.keep_difficult)
                    image = decode_rgb(raw.image_bytes, raw.source)
                    samples.append(eval_transform(image, boxes, labels, size, self.letterbox, out=images[i]))
            except DatasetError:
                raise  # names its sample already (decode_rgb)
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
            class_only=[r.record.class_only for r in raws],
        )


def _class_only_sample(
    raw: RawSample, size: int, augmentation: Augmentation, rng: np.random.Generator, out: np.ndarray
) -> Augmented:
    """A classification-only sample: the usual jitter, colour and flip without mosaic or mixup; its target is its
    label on the whole input, whatever the crop did to the box (the region loss reads only the label)."""
    plain = dataclasses.replace(augmentation, config=dataclasses.replace(augmentation.config, mosaic=0.0, mixup=0.0))
    sample = augment_raw(raw, [], size, plain, rng, out=out)
    whole = np.array([[0, 0, size, size]], np.float32)
    return sample._replace(boxes=whole, labels=raw.record.labels[:1].astype(np.int64))


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
        context.set_forkserver_preload([__name__])
        kwargs.update(
            prefetch_factor=prefetch_factor,
            worker_init_fn=_worker_init,
            persistent_workers=False,
            multiprocessing_context=context,
        )
    return DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **kwargs)
