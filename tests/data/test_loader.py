"""Tests for yolov2/data/loader.py: the rank/worker split, multi-scale sizes, collate, and the Ray Data functions.

The shards are tiny and written here (real JPEGs from cv2.imencode, records with boxes), with uneven sizes so
that neither the shards nor the samples divide evenly among ranks and workers.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from yolov2.config import TrainConfig
from yolov2.data import loader as L
from yolov2.data.records import ImageRecord
from yolov2.data.shards import write_shard_bytes
from yolov2.data.transforms import ColorJitter, color_params, darknet_color_tensor
from yolov2.errors import DatasetError

SHARD_SIZES = (7, 5, 9)  # 21 samples in 3 shards


def make_record(index: int, width: int, height: int) -> ImageRecord:
    x = 4 + index % 10
    return ImageRecord(
        image_id=f"img{index:03d}", split="train", path=f"img{index:03d}.jpg", width=width, height=height,
        boxes=[[x, 5, x + 20, 30], [30, 8, 44, 36]], labels=[index % 3, 1], difficult=[False, index % 4 == 0],
        iscrowd=[False, False],
    )


def make_jpeg(index: int, width: int, height: int) -> bytes:
    image = np.full((height, width, 3), (index * 11) % 256, np.uint8)
    cv2.rectangle(image, (4, 5), (24, 30), (0, 0, 255), -1)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return data.tobytes()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[L.ShardSpec]:
    folder = tmp_path_factory.mktemp("shards")
    specs, index = [], 0
    for number, count in enumerate(SHARD_SIZES):
        samples = []
        for _ in range(count):
            w, h = 48 + index % 5, 40 + index % 3
            samples.append((f"k{index:04d}", make_jpeg(index, w, h), make_record(index, w, h)))
            index += 1
        path = Path(folder) / f"train-{number:06d}.tar"
        path.write_bytes(write_shard_bytes(samples))
        specs.append(L.ShardSpec(str(path), count))
    return specs


def all_ids(shards: list[L.ShardSpec]) -> list[str]:
    return [f"img{i:03d}" for i in range(sum(s.num_samples for s in shards))]


def stream(shards, **kwargs) -> L.ShardStream:
    defaults = dict(batch_size=3, size=32, shuffle_buffer=4)
    defaults.update(kwargs)
    return L.ShardStream(shards, **defaults)


def rank_batches(shards, world: int, rank: int, workers: int, epoch: int = 0, **kwargs) -> list[L.Batch]:
    """What a rank's DataLoader would yield, slot by slot, in DataLoader's round-robin order."""
    s = stream(shards, world_size=world, rank=rank, **kwargs)
    s.set_epoch(epoch)
    batches = [b for w in range(workers) for b in s.iter_slot(w, workers)]
    return sorted(batches, key=lambda b: b.index)


# ---------------------------------------------------------------------------------------------
# The split
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("train", [True, False])
def test_every_sample_once_per_epoch_across_ranks_and_workers(shards, train):
    world, workers = 2, 2
    seen: Counter[str] = Counter()
    repeated: Counter[str] = Counter()
    counts = []
    for rank in range(world):
        batches = rank_batches(shards, world, rank, workers, train=train)
        counts.append(len(batches))
        assert [b.index for b in batches] == list(range(len(batches)))  # positions are a permutation
        for b in batches:
            for image_id, rep in zip(b.image_ids, b.repeated.tolist()):
                (repeated if rep else seen)[image_id] += 1
    assert counts[0] == counts[1] == L.batches_per_epoch(21, world, 3, workers)  # equal batches per rank
    assert sorted(seen) == all_ids(shards) and set(seen.values()) == {1}
    assert sum(repeated.values()) == L.rank_length(21, world) * world - 21 == 1  # the documented padding


def test_order_changes_with_the_epoch_and_repeats_with_the_seed(shards):
    def order(epoch, seed=0):
        batches = rank_batches(shards, 2, 0, 2, epoch=epoch, seed=seed)
        return [i for b in batches for i in b.image_ids], batches

    first, batches_a = order(0)
    again, batches_b = order(0)
    assert first == again
    assert all(torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
               for a, b in zip(batches_a, batches_b))
    assert order(1)[0] != first
    assert order(0, seed=1)[0] != first


def test_slot_ranges_tile_the_padded_sequence():
    for total in (0, 1, 5, 21, 100):
        for world in (1, 2, 3, 4):
            for workers in (1, 2, 3):
                covered = []
                for rank in range(world):
                    for worker in range(workers):
                        start, stop = L.slot_range(total, world, rank, workers, worker)
                        covered.extend(range(start, stop))
                assert covered == list(range(L.rank_length(total, world) * world))


def test_round_robin_position_matches_a_simulated_dataloader():
    for counts in ([3, 3], [3, 2], [2, 1, 1], [4, 4, 3, 3], [1, 0], [0, 0, 0], [1, 3], [0, 2], [2, 0, 2]):
        # simulate: cycle over workers, skipping exhausted ones
        order, produced = [], [0] * len(counts)
        while any(p < c for p, c in zip(produced, counts)):
            for w, c in enumerate(counts):
                if produced[w] < c:
                    order.append((w, produced[w]))
                    produced[w] += 1
        assert [L.round_robin_position(counts, w, t) for w, t in order] == list(range(len(order)))


def test_shard_specs_from_index_count_records_per_shard(shards):
    import pyarrow as pa

    index = pa.table({"shard": ["b.tar", "a.tar", "b.tar", "c.tar", "b.tar"], "key": list("vwxyz")})
    assert L.shard_specs_from_index(index, "/data/") == [
        L.ShardSpec("/data/a.tar", 1), L.ShardSpec("/data/b.tar", 3), L.ShardSpec("/data/c.tar", 1)
    ]


def test_stream_from_config(shards):
    cfg = TrainConfig(batch_size=5, input_size=64, multiscale=False, seed=9)
    s = L.ShardStream.from_config(shards, cfg, world_size=2, rank=1)
    assert (s.batch_size, s.size, s.schedule, s.seed, s.rank, s.world_size) == (5, 64, None, 9, 1, 2)
    assert [b.images.shape[-1] for b in s.iter_slot(0, 1)] == [64, 64, 64]  # 11 samples: 5 + 5 + 1


def test_read_samples_checks_the_index_counts(shards):
    wrong = [L.ShardSpec(shards[0].url, shards[0].num_samples + 1)]
    with pytest.raises(DatasetError, match="index says"):
        list(L.read_samples(wrong, 0, shards[0].num_samples + 1))
    assert [L.count_shard_samples(s.url) for s in shards] == list(SHARD_SIZES)


def test_fast_tar_reader_equals_webdataset(shards):
    for spec in shards:
        fast = list(L._samples_fast(spec.url))
        reference = list(L._samples_webdataset(spec.url))
        assert len(fast) == spec.num_samples and fast == reference


def test_shards_with_other_tar_members_fall_back_to_webdataset(tmp_path, shards):
    """A tar written by Python's tarfile in PAX format (a pax header before a long-named member)."""
    import io
    import tarfile

    raws = list(L.read_samples(shards, 0, 3))
    path = tmp_path / "pax.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for i, raw in enumerate(raws):
            key = raw.key if i < 2 else "long/" + "x" * 120  # > 100 bytes: needs a pax header
            for ext, data in (("jpg", raw.image_bytes), ("json", json.dumps(raw.record.to_dict()).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    got = list(L._iter_shard(str(path)))
    assert [k for k, _, _ in got] == [raws[0].key, raws[1].key, "long/" + "x" * 120]
    assert [img for _, img, _ in got] == [r.image_bytes for r in raws]


def test_corrupt_or_truncated_tar_is_an_error(tmp_path, shards):
    data = bytearray(Path(shards[0].url).read_bytes())
    data[5] ^= 0xFF  # a byte of the first member's name, in its header
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="checksum"):
        list(L._iter_shard(str(bad)))
    short = tmp_path / "short.tar"
    short.write_bytes(Path(shards[0].url).read_bytes()[:700])
    with pytest.raises(DatasetError, match="truncated"):
        list(L._iter_shard(str(short)))


def test_dataloader_workers_deliver_batches_in_position_order_with_their_sizes(shards):
    schedule = L.MultiScaleSchedule(32, 96, 32, every=1, seed=3)
    s = stream(shards, schedule=schedule, world_size=1, batch_size=4)  # 21 samples, 2 workers: 11 + 10 -> 3 + 3
    loader = L.make_dataloader(s, num_workers=2)
    batches = list(loader)
    assert [b.index for b in batches] == list(range(len(batches))) == list(range(s.batches_per_epoch(2)))
    assert [b.images.shape[-1] for b in batches] == [schedule.size_at(i) for i in range(len(batches))]
    assert sorted(i for b in batches for i in b.image_ids) == all_ids(shards)
    # the worker processes compute exactly what the in-process slots compute, and pick up set_epoch
    simulated = rank_batches(shards, 1, 0, 2, schedule=schedule, batch_size=4)
    assert [b.image_ids for b in batches] == [b.image_ids for b in simulated]
    assert all(torch.equal(a.images, b.images) for a, b in zip(batches, simulated))
    s.set_epoch(1)
    assert [i for b in loader for i in b.image_ids] != [i for b in batches for i in b.image_ids]


def test_accumulation_and_first_batch_shift_the_schedule(shards):
    schedule = L.MultiScaleSchedule(32, 128, 32, every=1, seed=5)
    s = stream(shards, schedule=schedule, first_batch=10, accumulation=2)
    batches = sorted(s.iter_slot(0, 1), key=lambda b: b.index)
    assert [b.images.shape[-1] for b in batches] == [schedule.size_at((10 + i) // 2) for i in range(len(batches))]


# ---------------------------------------------------------------------------------------------
# Multi-scale
# ---------------------------------------------------------------------------------------------


def test_multiscale_same_on_every_rank_and_changes_every_period():
    ranks = [L.MultiScaleSchedule(320, 608, 32, every=10, seed=42) for _ in range(3)]
    steps = list(range(500))
    sizes = [[r.size_at(i) for i in steps] for r in ranks]
    assert sizes[0] == sizes[1] == sizes[2]
    assert sizes[0] == [ranks[0].size_at(i) for i in reversed(steps)][::-1]  # pure: order of calls is irrelevant
    assert all(320 <= s <= 608 and s % 32 == 0 for s in sizes[0])
    for i in steps:
        if i % 10:
            assert sizes[0][i] == sizes[0][i - 1]
    assert len(set(sizes[0])) >= 7  # 50 periods over 10 sizes
    changes = sum(sizes[0][i] != sizes[0][i - 10] for i in range(10, 500, 10))
    assert changes >= 30
    other_seed = [L.MultiScaleSchedule(320, 608, 32, every=10, seed=43).size_at(i) for i in steps]
    assert other_seed != sizes[0]


def test_schedules_from_config():
    cfg = TrainConfig()
    sched = L.MultiScaleSchedule.from_config(cfg)
    assert (sched.min_size, sched.max_size, sched.step, sched.every, sched.seed) == (320, 608, 32, 10, 0)
    cfg.multiscale = False
    assert L.MultiScaleSchedule.from_config(cfg) is None
    aug = L.Augmentation.from_config(cfg)
    assert (aug.jitter, aug.hue, aug.saturation, aug.exposure, aug.device_color) == (0.3, 0.1, 1.5, 1.5, False)
    cfg.augment, cfg.use_gpu = "none", True
    assert L.Augmentation.from_config(cfg).jitter == 0.0
    with pytest.raises(Exception, match="multiple"):
        L.MultiScaleSchedule(320, 600, 32)


# ---------------------------------------------------------------------------------------------
# Collate and model input
# ---------------------------------------------------------------------------------------------


def test_collate_shapes_targets_and_padding():
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 80, 3), dtype=np.uint8)
    boxes = [np.array([[8, 16, 40, 48], [0, 0, 80, 64]], np.float32), np.zeros((0, 4), np.float32),
             np.array([[20, 10, 30, 60]], np.float32)]
    labels = [np.array([2, 0]), np.zeros(0, np.int64), np.array([5])]
    batch = L.collate(images, boxes, labels, ["a", "b", "c"], [(800, 640), (10, 20), (30, 40)], [False, True, False],
                      index=4, colors=[None, ColorJitter(0.1, 1.2, 0.9), None])
    assert batch.images.shape == (3, 3, 64, 80) and batch.images.dtype == torch.uint8
    assert batch.images.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch.images[1, 2, 5, 7], torch.tensor(images[1, 5, 7, 2]))  # RGB planes of NHWC
    assert batch.targets.shape == (3, 2, 5)
    for i in range(3):
        for j in range(2):
            if j < len(boxes[i]):
                x1, y1, x2, y2 = boxes[i][j]
                expect = [labels[i][j], (x1 + x2) / 2 / 80, (y1 + y2) / 2 / 64, (x2 - x1) / 80, (y2 - y1) / 64]
                np.testing.assert_allclose(batch.targets[i, j].numpy(), expect, atol=1e-6)
            else:
                assert (batch.targets[i, j] == -1).all()
    assert batch.image_ids == ["a", "b", "c"] and batch.index == 4
    assert batch.orig_sizes.tolist() == [[800, 640], [10, 20], [30, 40]] and batch.repeated.tolist() == [0, 1, 0]
    np.testing.assert_allclose(batch.color.numpy(), [[0, 1, 1], [0.1, 1.2, 0.9], [0, 1, 1]], atol=1e-7)


def test_to_model_input_scales_and_applies_deferred_color():
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8))
    images = images.permute(0, 3, 1, 2)
    x = L.to_model_input(images)
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(x * 255, images.float())
    params = color_params([ColorJitter(0.05, 1.3, 0.8), None])
    y = L.to_model_input(images, color=params)
    assert torch.allclose(y, darknet_color_tensor(images.float() / 255, params))
    assert torch.allclose(y[1], x[1])  # identity draw


def test_difficult_boxes_left_out_of_training_targets_unless_kept(shards):
    def boxes_of(keep):
        s = stream(shards, train=False, augmentation=L.Augmentation(keep_difficult=keep))
        return sum(int((b.targets[..., 0] >= 0).sum()) for b in s.iter_slot(0, 1))

    difficult = sum(1 for i in range(21) if i % 4 == 0)
    assert boxes_of(True) == 2 * 21 and boxes_of(False) == 2 * 21 - difficult


def test_eval_stream_is_letterboxed_in_file_order(shards):
    s = stream(shards, train=False, size=64)
    batches = list(s.iter_slot(0, 1))
    assert [i for b in batches for i in b.image_ids] == all_ids(shards)
    first = batches[0]
    assert first.images.shape[1:] == (3, 64, 64) and first.color is None
    # img000 is 48x40: letterboxed to 64x53 with 5 grey rows on top
    assert (first.images[0, :, :5] == 127).all() and (first.images[0, :, 5:58, 20] != 127).any()


def test_mosaic_and_mixup_paths_run_and_keep_boxes_inside(shards):
    aug = L.Augmentation(mosaic=1.0, mixup=1.0)
    batches = list(stream(shards, augmentation=aug, size=64).iter_slot(0, 1))
    targets = torch.cat([b.targets.reshape(-1, 5) for b in batches])
    real = targets[targets[:, 0] >= 0]
    assert len(real) > 21  # mosaic + mixup gather boxes from several images
    assert ((real[:, 1:] >= 0) & (real[:, 1:] <= 1)).all()


def test_corrupt_image_names_shard_and_key(tmp_path):
    record = make_record(0, 48, 40)
    path = tmp_path / "bad-000000.tar"
    path.write_bytes(write_shard_bytes([("k0", b"\xff\xd8\xffnot a jpeg", record)]))
    with pytest.raises(DatasetError, match=r"bad-000000.tar:k0"):
        list(stream([L.ShardSpec(str(path), 1)]).iter_slot(0, 1))


# ---------------------------------------------------------------------------------------------
# Ray Data functions (pure: no Ray here)
# ---------------------------------------------------------------------------------------------


def ray_rows(shards, limit=6) -> dict:
    raws = list(L.read_samples(shards, 0, limit))
    return {
        "__key__": np.array([r.key for r in raws], dtype=object),
        "jpg": np.array([r.image_bytes for r in raws], dtype=object),
        "json": np.array([json.dumps(r.record.to_dict()).encode() for r in raws], dtype=object),
    }


def test_decode_and_augment_batch_is_per_sample_deterministic(shards):
    rows = ray_rows(shards)
    whole = L.decode_and_augment_batch(rows, 48, seed=2, augmentation=L.Augmentation(device_color=True))
    part = L.decode_and_augment_batch({k: v[3:] for k, v in rows.items()}, 48, seed=2,
                                      augmentation=L.Augmentation(device_color=True))
    assert whole["image"].shape == (6, 48, 48, 3) and whole["image"].dtype == np.uint8
    assert np.array_equal(whole["image"][3:], part["image"])  # same key, same draws, whatever the batching
    assert all(np.array_equal(a, b) for a, b in zip(whole["boxes"][3:], part["boxes"]))
    assert (whole["color"] != [0, 1, 1]).any(axis=1).all()  # deferred draws travel with the batch
    other_epoch = L.decode_and_augment_batch(rows, 48, seed=2, epoch=1)
    assert not np.array_equal(other_epoch["image"], whole["image"])
    batch = L.batch_from_numpy(whole)
    assert batch.images.shape == (6, 3, 48, 48) and batch.targets.shape[0] == 6
    for i, rows_i in enumerate(whole["boxes"]):
        assert torch.equal(batch.targets[i, : len(rows_i)], torch.from_numpy(rows_i))
        assert (batch.targets[i, len(rows_i):] == -1).all()
    assert batch.image_ids == [f"img{i:03d}" for i in range(6)]


def test_decode_and_augment_batch_eval_matches_the_stream(shards):
    rows = ray_rows(shards, limit=3)
    out = L.decode_and_augment_batch(rows, 64, train=False)
    first = next(iter(stream(shards, train=False, size=64).iter_slot(0, 1)))
    assert np.array_equal(out["image"], first.images.permute(0, 2, 3, 1).numpy())
    assert torch.allclose(L.batch_from_numpy(out).targets, first.targets)
    assert out["orig_size"].tolist() == first.orig_sizes.tolist()


def test_row_batches_take_the_scheduled_size_keep_targets_and_flags(shards):
    """The Ray Data path augments at one size; the trainer resizes each batch to its step's size (cv2, per
    image), the normalised targets unchanged; padding flags pass through; identity colour rows mean no colour."""
    rows = ray_rows(shards, limit=4)
    rows["repeated"] = np.array([False, False, False, True])
    out = L.decode_and_augment_batch(rows, 64, seed=1, epoch=None)
    assert out["repeated"].tolist() == [False, False, False, True]
    sizes = {0: 32, 1: 64}
    batches = list(L.iter_row_batches([out, out], sizes.__getitem__))
    assert [b.images.shape[-1] for b in batches] == [32, 64] and [b.index for b in batches] == [0, 1]
    small = batches[0]
    expected = np.stack([cv2.resize(im, (32, 32), interpolation=cv2.INTER_AREA) for im in out["image"]])
    assert np.array_equal(small.images.permute(0, 2, 3, 1).numpy(), expected)
    assert torch.equal(small.targets, batches[1].targets) and small.repeated.tolist() == [False, False, False, True]
    assert small.color is None  # colour applied on the CPU: nothing left for the device
    again = L.decode_and_augment_batch({k: v for k, v in rows.items() if k != "repeated"}, 64, seed=1, epoch=None)
    assert "repeated" not in again and not np.array_equal(again["image"], out["image"])  # fresh draws per call
