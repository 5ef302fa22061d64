"""yolov2/data/stream.py: every sample once per epoch across ranks and workers, the DataLoader's workers,
multi-scale sizes per batch, evaluation batches, and errors naming the shard and key.

The shards are tiny and written here (tests/tiny_shards.py).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from pipelines.config import TrainConfig
from tiny_shards import all_ids, make_jpeg, make_record, rank_batches, stream, write_tiny_shards
from yolov2.config import AugmentConfig
from yolov2.data.augment import Augmentation, MultiScaleSchedule
from yolov2.data.partition import batches_per_epoch, rank_length
from yolov2.data.records import class_only_record
from yolov2.data.shards import ShardSpec, write_shard_bytes
from yolov2.data.stream import ShardStream, make_dataloader
from yolov2.errors import ConfigError, DatasetError


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[ShardSpec]:
    return write_tiny_shards(tmp_path_factory.mktemp("shards"))


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
    assert counts[0] == counts[1] == batches_per_epoch(21, world, 3, workers)  # equal batches per rank
    assert sorted(seen) == all_ids(shards) and set(seen.values()) == {1}
    assert sum(repeated.values()) == rank_length(21, world) * world - 21 == 1  # the documented padding


def test_order_changes_with_the_epoch_and_repeats_with_the_seed(shards):
    def order(epoch, seed=0):
        batches = rank_batches(shards, 2, 0, 2, epoch=epoch, seed=seed)
        return [i for b in batches for i in b.image_ids], batches

    first, batches_a = order(0)
    again, batches_b = order(0)
    assert first == again
    assert all(
        torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets) for a, b in zip(batches_a, batches_b)
    )
    assert order(1)[0] != first
    assert order(0, seed=1)[0] != first


def test_stream_from_config(shards):
    cfg = TrainConfig(batch_size=5, input_size=64, multiscale=False, seed=9)
    s = ShardStream.from_config(shards, cfg, world_size=2, rank=1)
    assert (s.batch_size, s.size, s.schedule, s.seed, s.rank, s.world_size) == (5, 64, None, 9, 1, 2)
    assert [b.images.shape[-1] for b in s.iter_slot(0, 1)] == [64, 64, 64]  # 11 samples: 5 + 5 + 1


def test_dataloader_workers_deliver_batches_in_position_order_with_their_sizes(shards):
    schedule = MultiScaleSchedule(32, 96, 32, every=1, seed=3)
    s = stream(shards, schedule=schedule, world_size=1, batch_size=4)  # 21 samples, 2 workers: 11 + 10 -> 3 + 3
    loader = make_dataloader(s, num_workers=2)
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
    schedule = MultiScaleSchedule(32, 128, 32, every=1, seed=5)
    s = stream(shards, schedule=schedule, first_batch=10, accumulation=2)
    batches = sorted(s.iter_slot(0, 1), key=lambda b: b.index)
    assert [b.images.shape[-1] for b in batches] == [schedule.size_at((10 + i) // 2) for i in range(len(batches))]


def test_difficult_boxes_left_out_of_training_targets_unless_kept(shards):
    def boxes_of(keep):
        s = stream(shards, train=False, augmentation=Augmentation(keep_difficult=keep))
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
    aug = Augmentation(AugmentConfig(mosaic=1.0, mixup=1.0))
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
        list(stream([ShardSpec(str(path), 1)]).iter_slot(0, 1))


def test_class_only_samples_carry_their_label_on_the_whole_input_and_no_mosaic(tmp_path):
    """YOLO9000's classification-only samples among detection ones: flagged in the batch, their target row is the
    label on the whole input whatever the jitter did, and mosaic (probability 1 here) never takes them."""
    samples = []
    for i in range(6):
        w, h = 48, 40
        record = make_record(i, w, h)
        if i % 2:
            record = class_only_record(f"cls{i}", "train", f"cls{i}.jpg", w, h, label=2)
        samples.append((f"k{i:04d}", make_jpeg(i, w, h), record))
    path = tmp_path / "mixed-000000.tar"
    path.write_bytes(write_shard_bytes(samples))
    aug = Augmentation(AugmentConfig(mosaic=1.0, jitter=0.3))
    for train in (True, False):
        (batch,) = list(
            stream([ShardSpec(str(path), 6)], train=train, augmentation=aug, size=64, batch_size=6).iter_slot(0, 1)
        )
        flags = {image_id: bool(flag) for image_id, flag in zip(batch.image_ids, batch.class_only)}
        assert flags == {**{f"img{i:03d}": False for i in (0, 2, 4)}, **{f"cls{i}": True for i in (1, 3, 5)}}
        for row, only in zip(batch.targets, batch.class_only):
            real = row[row[:, 0] >= 0]
            if only:
                assert real.tolist() == [[2.0, 0.5, 0.5, 1.0, 1.0]] if train else len(real) == 1
            elif train:
                assert len(real) > 2  # mosaic gathered boxes of four detection images, no whole-image box
                assert not ((real[:, 3] == 1.0) & (real[:, 4] == 1.0)).any()
    plain = list(stream(write_tiny_shards(tmp_path), train=True, size=64).iter_slot(0, 1))
    assert all(b.class_only is None for b in plain)


def _class_only_shards(folder: Path, sizes: tuple[int, ...]) -> list[ShardSpec]:
    specs, index = [], 0
    for number, count in enumerate(sizes):
        samples = []
        for _ in range(count):
            record = class_only_record(f"cls{index:03d}", "train", f"cls{index:03d}.jpg", 40, 32, label=index % 3)
            samples.append((f"c{index:04d}", make_jpeg(index, 40, 32), record))
            index += 1
        path = folder / f"train_class_only-{number:06d}.tar"
        path.write_bytes(write_shard_bytes(samples))
        specs.append(ShardSpec(str(path), count))
    return specs


def _class_only_flags(batch) -> list[bool]:
    return batch.class_only.tolist() if batch.class_only is not None else [False] * len(batch.image_ids)


@pytest.mark.parametrize(("world", "workers"), [(1, 1), (2, 2), (3, 2)])
def test_class_only_samples_join_each_epoch_at_the_ratio_and_cycle_evenly(tmp_path, world, workers):
    """21 detection samples with ratio 1.5: 32 classification-only samples per epoch (of 11, so each comes 2 or 3
    times), spread over ranks and workers; detection samples still once per epoch; the cycle continues over epochs
    so that after 11 epochs every classification-only sample came equally often."""
    shards = write_tiny_shards(tmp_path)
    class_only = _class_only_shards(tmp_path, (4, 7))
    seen: Counter = Counter()
    epochs = 11
    for epoch in range(epochs):
        per_rank = []
        for rank in range(world):
            batches = rank_batches(
                shards, world, rank, workers, epoch, class_only_shards=class_only, class_only_ratio=1.5
            )
            per_rank.append(batches)
            s = stream(shards, world_size=world, rank=rank, class_only_shards=class_only, class_only_ratio=1.5)
            assert len(batches) == s.batches_per_epoch(workers) == batches_per_epoch([21, 32], world, 3, workers)
        ids = [i for batches in per_rank for b in batches for i in b.image_ids]
        flags = [f for batches in per_rank for b in batches for f in _class_only_flags(b)]
        detection = [i for i, f in zip(ids, flags) if not f]
        assert set(detection) == set(all_ids(shards))  # every detection sample, once (plus rank padding)
        assert len(detection) == world * rank_length(21, world)
        assert sum(flags) == world * rank_length(32, world)
        assert all(i.startswith("cls") for i, f in zip(ids, flags) if f)
        assert any(0 < sum(_class_only_flags(b)) < len(b.image_ids) for b in per_rank[0])  # mixed in batches
        seen.update(i for i, f in zip(ids, flags) if f)
    if world == 1:
        assert len(seen) == 11 and set(seen.values()) == {32}  # 11 epochs x 32 = 352 = 11 x 32
    with pytest.raises(ConfigError, match="class_only_ratio 1.0 needs classification-only samples"):
        stream(shards, class_only_shards=[], class_only_ratio=1.0)
