"""yolov2/data/shard_build.py: writing a planned shard from dataset items, rejects naming the right file."""

from __future__ import annotations

import functools
import io

import numpy as np
import pytest

from yolov2.data.records import ImageRecord
from yolov2.data.shards import iter_shard_samples


def test_write_shard_reject_names_the_file_it_read(tmp_path):
    """A VOC image found through <filename> (here a .png) is not the listed <id>.jpg: name the real file."""
    from yolov2.data.shard_build import ShardItem, ShardOptions, write_shard
    from yolov2.errors import DatasetError

    png = tmp_path / "JPEGImages" / "a.png"
    png.parent.mkdir()
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)  # a PNG signature and nothing usable
    record = ImageRecord("a", "train", str(png), 80, 60)
    item = ShardItem("00000000", str(tmp_path / "JPEGImages" / "a.jpg"), functools.partial(_loaded, record))
    outcome = write_shard(io.BytesIO(), [item], ShardOptions())
    (reject,) = outcome.rejects
    assert reject.source == str(png) and reject.level == "image" and reject.image_id == "a"
    assert not reject.reason.startswith(str(png)), reject.reason  # the path is the source, not repeated
    with pytest.raises(DatasetError) as err:
        write_shard(io.BytesIO(), [item], ShardOptions(strict=True))
    assert str(err.value).startswith(f"{png}: ") and str(err.value).count(str(png)) == 1


def _loaded(record):
    return record, []


def test_write_shard_applies_the_pixel_limit(tmp_path):
    """ShardOptions.max_pixels (data.max_image_pixels) rejects larger images, naming the file."""
    import cv2

    from yolov2.data.shard_build import ShardItem, ShardOptions, write_shard

    path = tmp_path / "big.jpg"
    cv2.imwrite(str(path), np.zeros((20, 30, 3), np.uint8))
    record = ImageRecord("big", "train", str(path), 30, 20)
    item = ShardItem("00000000", str(path), lambda: (record, []))
    kept = write_shard(io.BytesIO(), [item], ShardOptions(max_pixels=600))
    assert [r.image_id for r in kept.records] == ["big"]
    refused = write_shard(io.BytesIO(), [item], ShardOptions(max_pixels=599))
    assert refused.records == [] and len(refused.rejects) == 1
    assert "limit" in refused.rejects[0].reason and refused.rejects[0].source == str(path)


def _shard_samples(shard: bytes, tmp_path):
    path = tmp_path / "shard.tar"
    path.write_bytes(shard)
    return iter_shard_samples(str(path))


def _jpeg(width: int, height: int) -> bytes:
    import cv2

    ok, data = cv2.imencode(".jpg", np.full((height, width, 3), 128, np.uint8))
    assert ok
    return data.tobytes()


def test_write_shard_names_the_annotation_and_its_size_when_they_disagree_with_the_image(tmp_path):
    """The XML (here ``ann``) is what gives the wrong size: the reject and the strict error name it, its
    size and the image's, as read_voc does."""
    from yolov2.data.shard_build import ShardItem, ShardOptions, write_shard
    from yolov2.errors import DatasetError

    path = tmp_path / "a.jpg"
    path.write_bytes(_jpeg(80, 60))
    ann = str(tmp_path / "Annotations" / "a.xml")
    item = ShardItem("00000000", str(path), lambda: (ImageRecord("a", "train", str(path), 100, 60), []), ann)
    (reject,) = write_shard(io.BytesIO(), [item], ShardOptions()).rejects
    assert reject.source == ann and reject.reason.startswith(
        f"{ann} gives the size 100x60 but the image a.jpg is 80x60"
    )
    with pytest.raises(DatasetError) as err:
        write_shard(io.BytesIO(), [item], ShardOptions(strict=True))
    assert str(err.value) == reject.reason  # the annotation named once, then both sizes


def test_write_shard_counts_sizes_from_the_image_and_jpegs_with_trailing_data(tmp_path):
    from yolov2.data.shard_build import ShardItem, ShardOptions, write_shard

    plain, motion = tmp_path / "plain.jpg", tmp_path / "motion.jpg"
    plain.write_bytes(_jpeg(80, 60))
    motion.write_bytes(_jpeg(80, 60) + b"\x00\x00\x00\x18ftypmp42 a video")
    records = [
        ImageRecord("plain", "train", str(plain), 80, 60, size_from_image=True),
        ImageRecord("motion", "train", str(motion), 80, 60),
    ]
    items = [ShardItem(f"{i:08d}", r.path, functools.partial(_loaded, r)) for i, r in enumerate(records)]
    buffer = io.BytesIO()
    outcome = write_shard(buffer, items, ShardOptions())
    assert outcome.rejects == [] and (outcome.sizes_from_image, outcome.trailing_data) == (1, 1)
    samples = {key: data for key, data, _ in _shard_samples(buffer.getvalue(), tmp_path)}
    assert samples["00000001"] == motion.read_bytes()  # kept as it is, video included


def test_write_shard_rejects_an_image_that_is_not_a_regular_file_without_blocking(tmp_path):
    from corpus.special import finishes_within, make_special
    from yolov2.data.shard_build import ShardItem, ShardOptions, write_shard

    path = make_special(tmp_path / "a.jpg", "fifo")
    item = ShardItem("00000000", str(path), lambda: (ImageRecord("a", "train", str(path), 80, 60), []))
    outcome = finishes_within(10, lambda: write_shard(io.BytesIO(), [item], ShardOptions()))
    (reject,) = outcome.rejects
    assert reject.source == str(path) and "not a regular file but a named pipe (FIFO)" in reject.reason
