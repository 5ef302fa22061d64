"""Who reads what: pure arithmetic on sample positions, the same on every rank and worker.

Each epoch the shard order is a permutation drawn from ``(seed, epoch)`` (:func:`epoch_shard_order`) and the
samples, in that order, form one global sequence. It is padded to a multiple of ``world_size`` by repeating its
first samples (as ``DistributedSampler`` does), cut into ``world_size`` equal contiguous parts (one per rank,
:func:`rank_length`), and each part into near-equal contiguous parts, one per DataLoader worker
(:func:`slot_range`). So every sample is seen exactly once per epoch across all ranks and workers (plus the
repeats), and every rank yields the same number of batches (DDP needs that: :func:`batches_per_epoch`).
``DataLoader`` (``in_order=True``, the default) takes batches from its workers round-robin, skipping exhausted
ones, so a worker knows where each of its batches lands in its rank's stream (:func:`round_robin_position`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

__all__ = [
    "epoch_shard_order",
    "rank_length",
    "slot_range",
    "worker_batch_counts",
    "batches_per_epoch",
    "round_robin_position",
]

T = TypeVar("T")


def epoch_shard_order(shards: Sequence[T], seed: int, epoch: int, shuffle: bool = True) -> list[T]:
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


def worker_batch_counts(
    per_rank: int | Sequence[int], num_workers: int, batch_size: int, drop_last: bool = False
) -> list[int]:
    """Batches each worker of a rank yields (identical on every rank, since ``per_rank`` is).

    ``per_rank``: the rank's sample count, or the counts of several sequences read side by side (detection and
    classification-only samples), each split among the workers as :func:`slot_range` splits one.
    """
    parts = [per_rank] if isinstance(per_rank, int) else list(per_rank)
    counts = []
    for worker in range(num_workers):
        n = sum(part // num_workers + (1 if worker < part % num_workers else 0) for part in parts)
        counts.append(n // batch_size if drop_last else -(-n // batch_size))
    return counts


def batches_per_epoch(
    total: int | Sequence[int], world_size: int, batch_size: int, num_workers: int = 1, drop_last: bool = False
) -> int:
    """Batches per rank per epoch (the trainer's step arithmetic and the LR schedule need it); ``total``: the
    samples of the epoch, or of each sequence read side by side (:func:`worker_batch_counts`)."""
    parts = [total] if isinstance(total, int) else list(total)
    per_rank = [rank_length(part, world_size) for part in parts]
    return sum(worker_batch_counts(per_rank, max(num_workers, 1), batch_size, drop_last))


def round_robin_position(counts: Sequence[int], worker: int, t: int) -> int:
    """Where worker ``worker``'s ``t``-th batch lands in the DataLoader's output.

    ``DataLoader`` (``in_order=True``) cycles over its workers and skips those that are exhausted, so the output
    is ordered by (round t, worker id): before it come ``min(c_v, t)`` batches of every worker v and one batch of
    each lower-numbered worker that still has a ``t``-th one.
    """
    return sum(min(c, t) for c in counts) + sum(1 for v in range(worker) if counts[v] > t)
