"""Batches of a classification split for one rank: its share of the samples of a sequence of classification
shards (:mod:`yolov2.data.cls_shards`), decoded and transformed, as ``(images float[B, 3, S, S], labels
int64[B])``.

Rank ``r`` of ``world`` takes the samples at positions ``r, r + world, ...``. For training, every rank takes
the same number (``total // world``: the last few samples of an epoch wait for the next shuffle), so every
rank runs the same number of steps, as DDP needs; the order is a seeded shuffle of the shards and of a
buffer of samples, different each epoch and the same on a rerun. For validation every sample is taken once
over all ranks, in file order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from yolov2.data.cls_shards import iter_cls_shard
from yolov2.data.images import decode_rgb
from yolov2.data.stream import shuffled

Transform = Callable[[np.ndarray, np.random.Generator], torch.Tensor]


def rank_samples(total: int, rank: int, world: int, train: bool) -> int:
    """How many samples rank ``rank`` takes from a split of ``total``."""
    if train:
        return total // world
    return len(range(rank, total, world))


def class_batches(
    urls: Sequence[str],
    total: int,
    transform: Transform,
    batch_size: int,
    rank: int,
    world: int,
    *,
    train: bool,
    seed: int,
    epoch: int,
    shuffle_buffer: int = 256,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The rank's batches of one epoch (the last one smaller when the rank's count is not a multiple)."""
    rng = np.random.default_rng([seed, epoch, rank])
    order = list(urls)
    if train:
        np.random.default_rng([seed, epoch]).shuffle(order)  # the same shard order on every rank
    wanted = rank_samples(total, rank, world, train)
    mine: Iterator[tuple[str, bytes, int]] = (
        item for position, item in enumerate(_samples(order)) if position % world == rank
    )
    if train:
        mine = shuffled(mine, shuffle_buffer, rng)
    images: list[torch.Tensor] = []
    labels: list[int] = []
    for _, (key, data, label) in zip(range(wanted), mine):
        images.append(transform(decode_rgb(data, key), rng))
        labels.append(label)
        if len(images) == batch_size:
            yield torch.stack(images), torch.tensor(labels, dtype=torch.int64)
            images, labels = [], []
    if images:
        yield torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def _samples(urls: Sequence[str]) -> Iterator[tuple[str, bytes, int]]:
    for url in urls:
        yield from iter_cls_shard(url)
