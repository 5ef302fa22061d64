"""yolov2/data/shards.py, both ways. The writer against the references: Python's `tarfile` and `webdataset` must read
it back. The reader (ours for plain ustar, webdataset for anything else) against webdataset, on tiny shards written
here (tests/tiny_shards.py), and on PAX, corrupt and truncated tars.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tiny_shards import SHARD_SIZES, write_tiny_shards
from yolov2.data import shards as S
from yolov2.data.records import ImageRecord
from yolov2.data.shards import (
    ShardSpec,
    count_shard_samples,
    read_samples,
    record_json,
    shard_specs_from_index,
    tar_header,
    write_shard_bytes,
)
from yolov2.errors import DatasetError


def _record(i: int) -> ImageRecord:
    return ImageRecord(
        image_id=f"img é {i}",
        split="train",
        path=f"/data/{i}.jpg",
        width=64 + i,
        height=48,
        boxes=[[1.5, 2.0, 30.25, 40.0]] * (i % 3),
        labels=[i % 2] * (i % 3),
        difficult=[False] * (i % 3),
        iscrowd=[True] * (i % 3),
    )


def _samples(n: int) -> list[tuple[str, bytes, ImageRecord]]:
    rng = np.random.default_rng(0)
    # sizes that hit the 512-byte padding edge cases: 0, 1, 511, 512, 513 and random
    sizes = [0, 1, 511, 512, 513] + list(rng.integers(1, 5000, n - 5))
    return [(f"{i:08d}", rng.integers(0, 256, s, dtype=np.uint8).tobytes(), _record(i)) for i, s in enumerate(sizes)]


def test_tarfile_reads_every_member_with_fixed_metadata():
    samples = _samples(12)
    data = write_shard_bytes(samples)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [n for k, _, _ in samples for n in (f"{k}.jpg", f"{k}.json")]
        for m in members:
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o444)
            assert m.isfile()
        for (_key, image, _record), m in zip(samples, members[0::2]):
            assert tar.extractfile(m).read() == image
        for (_key, _image, record), m in zip(samples, members[1::2]):
            assert tar.extractfile(m).read() == record_json(record)


def test_webdataset_reads_back_bytes_and_records(tmp_path):
    samples = _samples(9)
    path = tmp_path / "train-000000.tar"
    path.write_bytes(write_shard_bytes(samples))
    back = list(S.iter_shard_samples(str(path)))
    assert len(back) == len(samples)
    for (key, image, record), (key2, image2, record2) in zip(samples, back):
        assert key == key2 and image == image2
        assert record2.to_dict() == record.to_dict()


def test_same_samples_give_identical_bytes():
    assert write_shard_bytes(_samples(7)) == write_shard_bytes(_samples(7))


def test_header_checksum_matches_tarfile_rule():
    header = tar_header("abc.jpg", 1234)
    stored = int(header[148:154], 8)
    assert stored == sum(header[:148]) + 8 * 32 + sum(header[156:])
    assert len(header) == 512


@pytest.mark.parametrize("key", ["a.b", "", "x" * 200, "sp ace"])
def test_bad_keys_are_refused(key):
    with pytest.raises(ValueError, match="key"):
        write_shard_bytes([(key, b"1", _record(0))])


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[ShardSpec]:
    return write_tiny_shards(tmp_path_factory.mktemp("shards"))


def test_shard_specs_from_index_count_records_per_shard(shards):
    import pyarrow as pa

    index = pa.table({"shard": ["b.tar", "a.tar", "b.tar", "c.tar", "b.tar"], "key": list("vwxyz")})
    assert shard_specs_from_index(index, "/data/") == [
        ShardSpec("/data/a.tar", 1),
        ShardSpec("/data/b.tar", 3),
        ShardSpec("/data/c.tar", 1),
    ]


def test_read_samples_checks_the_index_counts(shards):
    wrong = [ShardSpec(shards[0].url, shards[0].num_samples + 1)]
    with pytest.raises(DatasetError, match="index says"):
        list(read_samples(wrong, 0, shards[0].num_samples + 1))
    assert [count_shard_samples(s.url) for s in shards] == list(SHARD_SIZES)


def test_fast_tar_reader_equals_webdataset(shards):
    for spec in shards:
        fast = list(S._samples_fast(spec.url))
        reference = list(S._samples_webdataset(spec.url))
        assert len(fast) == spec.num_samples and fast == reference


def test_shards_with_other_tar_members_fall_back_to_webdataset(tmp_path, shards):
    """A tar written by Python's tarfile in PAX format (a pax header before a long-named member)."""
    import io
    import tarfile

    raws = list(read_samples(shards, 0, 3))
    path = tmp_path / "pax.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for i, raw in enumerate(raws):
            key = raw.key if i < 2 else "long/" + "x" * 120  # > 100 bytes: needs a pax header
            for ext, data in (("jpg", raw.image_bytes), ("json", json.dumps(raw.record.to_dict()).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    got = list(S._iter_shard(str(path)))
    assert [k for k, _, _ in got] == [raws[0].key, raws[1].key, "long/" + "x" * 120]
    assert [img for _, img, _ in got] == [r.image_bytes for r in raws]


def test_corrupt_or_truncated_tar_is_an_error(tmp_path, shards):
    data = bytearray(Path(shards[0].url).read_bytes())
    data[5] ^= 0xFF  # a byte of the first member's name, in its header
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="checksum"):
        list(S._iter_shard(str(bad)))
    short = tmp_path / "short.tar"
    short.write_bytes(Path(shards[0].url).read_bytes()[:700])
    with pytest.raises(DatasetError, match="truncated"):
        list(S._iter_shard(str(short)))
