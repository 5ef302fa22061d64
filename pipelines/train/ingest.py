"""Training batches for one Ray Train worker, from either ingest path (``train.ingest``).

``webdataset`` (single node): each rank reads its part of the WebDataset shards through a DataLoader,
bit-reproducible. ``ray_data`` (cluster): the driver builds a Ray Dataset (:func:`ray_data_train_dataset`),
Ray Data's CPU tasks decode and augment, and each rank streams its ``get_dataset_shard``.

Both return ``(batches(epoch, first_micro) -> iterable of Batch, micro-batches per epoch)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import ray.data
import ray.train

from pipelines.config import TrainConfig
from pipelines.workspace import Workspace
from yolov2.data.augment import Augmentation, MultiScaleSchedule
from yolov2.data.batch import Batch
from yolov2.data.partition import batches_per_epoch
from yolov2.data.row_batches import decode_and_augment_batch, iter_row_batches
from yolov2.data.shards import ShardSpec, shard_specs_from_index
from yolov2.data.stream import ShardStream, make_dataloader

RAY_DATA_CPUS = 0.25  # per Ray Data read/decode task; ray_data trainers leave this much of their CPUs to them
Batches = Callable[[int, int], Iterable[Batch]]


def webdataset_batches(
    t: TrainConfig,
    workspace: Workspace,
    shard_dir: str,
    train_index: str,
    world: int,
    rank: int,
    accumulation: int,
    class_only_index: str | None = None,
) -> tuple[Batches, int]:
    """Single-node ingest: this rank's part of the WebDataset shards (``train_index`` in ``shard_dir``)
    through a DataLoader, with the classification-only shards (``class_only_index``) mixed in when given."""

    def shards(index: str) -> list[ShardSpec]:
        table = pq.read_table(workspace.path(shard_dir, index), filesystem=workspace.fs)
        return shard_specs_from_index(table, workspace.uri_of(shard_dir))

    class_only = shards(class_only_index) if class_only_index else []
    stream = ShardStream.from_config(
        shards(train_index), t, world, rank, accumulation=accumulation, class_only_shards=class_only
    )
    loader = make_dataloader(stream, num_workers=t.loader_workers)

    def batches(epoch: int, first_micro: int):
        stream.set_epoch(epoch, first_micro)
        return loader

    return batches, stream.batches_per_epoch(t.loader_workers)


def ray_data_batches(t: TrainConfig, total: int, world: int, accumulation: int) -> tuple[Batches, int]:
    """Cluster ingest: this rank's stream of the Ray Dataset the driver built (:func:`ray_data_train_dataset`),
    decoded and augmented by Ray Data's CPU tasks, each batch resized here to its multi-scale step's size.

    The split is Ray Train's ``streaming_split(equal=True)`` of a dataset padded to a multiple of ``world``, so
    every rank gets ``total / world`` rows, the same batch count, and each sample once per epoch."""
    shard = ray.train.get_dataset_shard("train")
    schedule = MultiScaleSchedule.from_config(t)

    def batches(epoch: int, first_micro: int):
        def size_of(position: int) -> int:
            return schedule.size_at((first_micro + position) // accumulation) if schedule else t.input_size

        rows = shard.iter_batches(
            batch_size=t.batch_size, batch_format="numpy", drop_last=False, local_shuffle_buffer_size=4 * t.batch_size
        )
        return iter_row_batches(rows, size_of)

    return batches, batches_per_epoch(total, world, t.batch_size)


def ray_data_train_dataset(t: TrainConfig, shard_urls: list[str], total: int, world: int) -> ray.data.Dataset:
    """The training shards as a Ray Dataset: ``read_webdataset`` (raw bytes, file order shuffled each epoch),
    padded to a multiple of ``world`` by repeating samples (flagged ``repeated``; ``streaming_split(equal=True)``
    would otherwise drop the remainder), then decode + Darknet augmentation in ``map_batches`` on CPU tasks.

    Images come out at the schedule's largest size (the input size without multi-scale); each trainer resizes
    a batch to its step's size, which only the shared schedule knows. The augmentation draws are fresh each
    epoch (a Ray Data plan cannot see the epoch), so this path is not bit-reproducible, unlike the WebDataset one.
    """

    def read():
        return ray.data.read_webdataset(shard_urls, decoder=None, shuffle="files", num_cpus=RAY_DATA_CPUS)

    ds = read().map_batches(_flag_repeated, fn_kwargs={"repeated": False}, batch_format="numpy", num_cpus=RAY_DATA_CPUS)
    pad = -total % world
    if pad:
        ds = ds.union(
            read()
            .limit(pad)
            .map_batches(_flag_repeated, fn_kwargs={"repeated": True}, batch_format="numpy", num_cpus=RAY_DATA_CPUS)
        )
    schedule = MultiScaleSchedule.from_config(t)
    size = max(schedule.sizes) if schedule else t.input_size
    return ds.map_batches(
        decode_and_augment_batch,
        batch_size=t.batch_size,
        batch_format="numpy",
        num_cpus=RAY_DATA_CPUS,
        fn_kwargs=dict(
            size=size,
            seed=t.seed,
            epoch=None,
            train=True,
            augmentation=Augmentation.from_config(t.augmentation, device_color=t.use_gpu),
        ),
    )


def _flag_repeated(batch: dict[str, Any], repeated: bool) -> dict[str, Any]:
    return {**batch, "repeated": np.full(len(batch["__key__"]), repeated)}
