"""yolov2/data/cls_stream.py: each rank's share of a classification split, batched."""

from __future__ import annotations

import numpy as np
import torch

from yolov2.data.cls_shards import cls_shard_bytes, encode_jpeg
from yolov2.data.cls_stream import class_batches, rank_samples


def _shards(tmp_path, counts: list[int]) -> list[str]:
    urls, n = [], 0
    for s, count in enumerate(counts):
        samples = []
        for _ in range(count):
            image = np.full((8, 8, 3), n % 256, np.uint8)
            samples.append((f"s{n:05d}", encode_jpeg(image), n))  # the label is the sample's number
            n += 1
        path = tmp_path / f"train-{s:06d}.tar"
        path.write_bytes(cls_shard_bytes(samples))
        urls.append(str(path))
    return urls


def _labels(transform_size: int = 8):
    def transform(image, rng):
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255

    return transform


def _taken(urls, total, rank, world, train, epoch=0, batch_size=4) -> list[int]:
    batches = class_batches(urls, total, _labels(), batch_size, rank, world, train=train, seed=3, epoch=epoch)
    out = []
    for images, labels in batches:
        assert images.shape == (len(labels), 3, 8, 8) and labels.dtype == torch.int64 and len(labels) <= batch_size
        out.extend(labels.tolist())
    return out


def test_validation_takes_every_sample_once_over_the_ranks_in_file_order(tmp_path):
    urls = _shards(tmp_path, [5, 6, 2])
    shares = [_taken(urls, 13, rank, 3, train=False) for rank in range(3)]
    assert [len(s) for s in shares] == [rank_samples(13, r, 3, train=False) for r in range(3)] == [5, 4, 4]
    assert sorted(sum(shares, [])) == list(range(13))
    assert shares[1] == [1, 4, 7, 10]


def test_training_gives_every_rank_the_same_count_of_disjoint_samples_shuffled_per_epoch(tmp_path):
    urls = _shards(tmp_path, [5, 6, 2])
    shares = [_taken(urls, 13, rank, 2, train=True) for rank in range(2)]
    assert [len(s) for s in shares] == [6, 6]
    assert not set(shares[0]) & set(shares[1])
    assert _taken(urls, 13, 0, 2, train=True) == shares[0]  # the same on a rerun
    other_epoch = _taken(urls, 13, 0, 2, train=True, epoch=1)
    assert other_epoch != shares[0] and len(other_epoch) == 6
    assert sorted(_taken(urls, 13, 0, 1, train=True)) == list(range(13))  # one rank: all of them
