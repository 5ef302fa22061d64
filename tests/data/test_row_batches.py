"""yolov2/data/row_batches.py: the Ray Data functions (pure: no Ray here), against the single-node stream.

The shards are tiny and written here (tests/tiny_shards.py).
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from tiny_shards import stream, write_tiny_shards
from yolov2.data.augment import Augmentation
from yolov2.data.row_batches import batch_from_numpy, decode_and_augment_batch, iter_row_batches
from yolov2.data.shards import ShardSpec, read_samples


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[ShardSpec]:
    return write_tiny_shards(tmp_path_factory.mktemp("shards"))


def ray_rows(shards, limit=6) -> dict:
    raws = list(read_samples(shards, 0, limit))
    return {
        "__key__": np.array([r.key for r in raws], dtype=object),
        "jpg": np.array([r.image_bytes for r in raws], dtype=object),
        "json": np.array([json.dumps(r.record.to_dict()).encode() for r in raws], dtype=object),
    }


def test_decode_and_augment_batch_is_per_sample_deterministic(shards):
    rows = ray_rows(shards)
    whole = decode_and_augment_batch(rows, 48, seed=2, augmentation=Augmentation(device_color=True))
    part = decode_and_augment_batch(
        {k: v[3:] for k, v in rows.items()}, 48, seed=2, augmentation=Augmentation(device_color=True)
    )
    assert whole["image"].shape == (6, 48, 48, 3) and whole["image"].dtype == np.uint8
    assert np.array_equal(whole["image"][3:], part["image"])  # same key, same draws, whatever the batching
    assert all(np.array_equal(a, b) for a, b in zip(whole["boxes"][3:], part["boxes"]))
    assert (whole["color"] != [0, 1, 1]).any(axis=1).all()  # deferred draws travel with the batch
    other_epoch = decode_and_augment_batch(rows, 48, seed=2, epoch=1)
    assert not np.array_equal(other_epoch["image"], whole["image"])
    batch = batch_from_numpy(whole)
    assert batch.images.shape == (6, 3, 48, 48) and batch.targets.shape[0] == 6
    for i, rows_i in enumerate(whole["boxes"]):
        assert torch.equal(batch.targets[i, : len(rows_i)], torch.from_numpy(rows_i))
        assert (batch.targets[i, len(rows_i) :] == -1).all()
    assert batch.image_ids == [f"img{i:03d}" for i in range(6)]


def test_decode_and_augment_batch_eval_matches_the_stream(shards):
    rows = ray_rows(shards, limit=3)
    out = decode_and_augment_batch(rows, 64, train=False)
    first = next(iter(stream(shards, train=False, size=64).iter_slot(0, 1)))
    assert np.array_equal(out["image"], first.images.permute(0, 2, 3, 1).numpy())
    assert torch.allclose(batch_from_numpy(out).targets, first.targets)
    assert out["orig_size"].tolist() == first.orig_sizes.tolist()


def test_row_batches_take_the_scheduled_size_keep_targets_and_flags(shards):
    """The Ray Data path augments at one size; the trainer resizes each batch to its step's size (cv2, per
    image), the normalised targets unchanged; padding flags pass through; identity colour rows mean no colour."""
    rows = ray_rows(shards, limit=4)
    rows["repeated"] = np.array([False, False, False, True])
    out = decode_and_augment_batch(rows, 64, seed=1, epoch=None)
    assert out["repeated"].tolist() == [False, False, False, True]
    sizes = {0: 32, 1: 64}
    batches = list(iter_row_batches([out, out], sizes.__getitem__))
    assert [b.images.shape[-1] for b in batches] == [32, 64] and [b.index for b in batches] == [0, 1]
    small = batches[0]
    expected = np.stack([cv2.resize(im, (32, 32), interpolation=cv2.INTER_AREA) for im in out["image"]])
    assert np.array_equal(small.images.permute(0, 2, 3, 1).numpy(), expected)
    assert torch.equal(small.targets, batches[1].targets) and small.repeated.tolist() == [False, False, False, True]
    assert small.color is None  # colour applied on the CPU: nothing left for the device
    again = decode_and_augment_batch({k: v for k, v in rows.items() if k != "repeated"}, 64, seed=1, epoch=None)
    assert "repeated" not in again and not np.array_equal(again["image"], out["image"])  # fresh draws per call
