"""Tiny shards written by the loader tests (tests/data/test_stream.py, test_shards.py, test_row_batches.py).

Real JPEGs from cv2.imencode, records with boxes, with uneven sizes so that neither the shards nor the samples
divide evenly among ranks and workers.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from yolov2.data.batch import Batch
from yolov2.data.records import ImageRecord
from yolov2.data.shards import ShardSpec, write_shard_bytes
from yolov2.data.stream import ShardStream

SHARD_SIZES = (7, 5, 9)  # 21 samples in 3 shards


def make_record(index: int, width: int, height: int) -> ImageRecord:
    x = 4 + index % 10
    return ImageRecord(
        image_id=f"img{index:03d}",
        split="train",
        path=f"img{index:03d}.jpg",
        width=width,
        height=height,
        boxes=[[x, 5, x + 20, 30], [30, 8, 44, 36]],
        labels=[index % 3, 1],
        difficult=[False, index % 4 == 0],
        iscrowd=[False, False],
    )


def make_jpeg(index: int, width: int, height: int) -> bytes:
    image = np.full((height, width, 3), (index * 11) % 256, np.uint8)
    cv2.rectangle(image, (4, 5), (24, 30), (0, 0, 255), -1)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return data.tobytes()


def write_tiny_shards(folder: Path) -> list[ShardSpec]:
    specs, index = [], 0
    for number, count in enumerate(SHARD_SIZES):
        samples = []
        for _ in range(count):
            w, h = 48 + index % 5, 40 + index % 3
            samples.append((f"k{index:04d}", make_jpeg(index, w, h), make_record(index, w, h)))
            index += 1
        path = Path(folder) / f"train-{number:06d}.tar"
        path.write_bytes(write_shard_bytes(samples))
        specs.append(ShardSpec(str(path), count))
    return specs


def all_ids(shards: list[ShardSpec]) -> list[str]:
    return [f"img{i:03d}" for i in range(sum(s.num_samples for s in shards))]


def stream(shards, **kwargs) -> ShardStream:
    defaults = dict(batch_size=3, size=32, shuffle_buffer=4)
    defaults.update(kwargs)
    return ShardStream(shards, **defaults)


def rank_batches(shards, world: int, rank: int, workers: int, epoch: int = 0, **kwargs) -> list[Batch]:
    """What a rank's DataLoader would yield, slot by slot, in DataLoader's round-robin order."""
    s = stream(shards, world_size=world, rank=rank, **kwargs)
    s.set_epoch(epoch)
    batches = [b for w in range(workers) for b in s.iter_slot(w, workers)]
    return sorted(batches, key=lambda b: b.index)
