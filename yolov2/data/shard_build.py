"""Writing one planned shard from dataset items: what a shard task runs.

Each :class:`ShardItem` is read (its record from the annotation, its image bytes), checked (the image header
against the record), re-encoded only when needed, and written with :class:`yolov2.data.shards.TarShardWriter`;
bad images become rejects (or errors, ``strict``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import BinaryIO

import numpy as np

from yolov2.data.images import DEFAULT_MAX_PIXELS, ImageInfo, check_image_against_record, inspect_image
from yolov2.data.paths import read_regular_file
from yolov2.data.records import ImageRecord, Reject, reject_message
from yolov2.data.shards import TarShardWriter
from yolov2.errors import DatasetError

__all__ = ["ShardItem", "ShardOptions", "ShardOutcome", "write_shard"]

_JPEG_SOI = b"\xff\xd8\xff"


@dataclass(frozen=True)
class ShardItem:
    """One image to shard: its key in the shard, its file, and how to read its annotation.

    ``load`` is a picklable callable (a ``functools.partial`` of a reader's per-image function)
    returning ``(record, box_rejects)``, or ``(None, [image_reject])`` when the image is unusable.
    ``annotation`` names where the record's size comes from (a VOC XML, a COCO file's entry, a YOLO
    image itself), so that an image disagreeing with it names both; empty: the image.
    """

    key: str
    image_path: str
    load: Callable[[], tuple[ImageRecord | None, list[Reject]]]
    annotation: str = ""

    def source_bytes(self) -> int:
        try:
            return os.stat(self.image_path).st_size
        except OSError:
            return 0


@dataclass(frozen=True)
class ShardOptions:
    reencode: bool = False  # re-encode every image as JPEG
    max_side: int | None = None  # downscale images whose longer side exceeds this (boxes follow)
    jpeg_quality: int = 95
    strict: bool = False  # raise DatasetError on the first bad image instead of rejecting it
    max_pixels: int = DEFAULT_MAX_PIXELS  # decompression-bomb guard: larger images are rejected


@dataclass
class ShardOutcome:
    """What a shard task reports back: the records it wrote (in order), their keys, its rejects, and
    the images kept after a repair: sized from the image header (the annotation gave no size), and
    JPEGs with bytes after their end marker (motion photos; the bytes are kept as they are)."""

    records: list[ImageRecord] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    bytes_written: int = 0
    reencoded: int = 0
    sizes_from_image: int = 0
    trailing_data: int = 0


def write_shard(stream: BinaryIO, items: list[ShardItem], options: ShardOptions, shard_name: str = "") -> ShardOutcome:
    """Read, check and write ``items`` into one tar stream; bad images become rejects (or errors).

    Images keep their original bytes unless they are not JPEG, or re-encoding/downscaling is asked
    for. Only the image header is parsed (no full decode).
    """
    outcome = ShardOutcome()
    with TarShardWriter(stream) as writer:
        for item in items:
            record, rejects = item.load()
            outcome.rejects.extend(rejects)
            if record is None:
                continue
            problem, info, data = _read_image(record.path, options.max_pixels)
            where = record.path  # the file actually read: a VOC image found through <filename> is not item.image_path
            if problem is None:
                assert info is not None  # _read_image gives the header info whenever there is no problem
                if mismatch := check_image_against_record(info, record, item.annotation or where):
                    problem, where = mismatch, item.annotation or where  # named from the annotation, as the readers do
            if problem is None:
                try:
                    data, record, changed = _maybe_reencode(data, record, options)
                    outcome.reencoded += int(changed)
                except DatasetError as e:
                    problem = str(e)
            if problem is not None:
                problem = problem.removeprefix(f"{where}: ")
                if options.strict:
                    raise DatasetError(reject_message(where, problem))
                outcome.rejects.append(Reject(where, problem, "image", record.image_id, record.split))
                continue
            writer.write_sample(item.key, data, record)
            outcome.records.append(record)
            outcome.keys.append(item.key)
            outcome.sizes_from_image += record.size_from_image
            assert info is not None  # no problem, so _read_image gave the header info
            outcome.trailing_data += info.trailing_bytes > 0
    outcome.bytes_written = writer.bytes_written
    return outcome


def _read_image(path: str, max_pixels: int) -> tuple[str | None, ImageInfo | None, bytes]:
    """(problem, header info, bytes) of an image file: a problem when it cannot be read or inspected."""
    try:
        data = read_regular_file(path)
    except FileNotFoundError:
        return "image file is missing", None, b""
    except OSError as e:
        return f"image file cannot be read ({e.strerror})", None, b""
    try:
        return None, inspect_image(data, path, max_pixels), data
    except DatasetError as e:
        return str(e), None, b""


def _maybe_reencode(data: bytes, record: ImageRecord, options: ShardOptions) -> tuple[bytes, ImageRecord, bool]:
    """Re-encode as JPEG when asked, when downscaling, or when the source is not a JPEG."""
    longest = max(record.width, record.height)
    downscale = options.max_side is not None and longest > options.max_side
    if not (options.reencode or downscale or not data.startswith(_JPEG_SOI)):
        return data, record, False
    import cv2  # only here: a task that keeps the original bytes never loads OpenCV

    from yolov2.data.images import decode_rgb

    image = decode_rgb(data, record.path)
    if downscale:
        assert options.max_side is not None  # downscale implies a max_side
        scale = options.max_side / longest
        new_w, new_h = max(1, round(record.width * scale)), max(1, round(record.height * scale))
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        sx, sy = new_w / record.width, new_h / record.height
        record = replace(record, width=new_w, height=new_h, boxes=record.boxes * np.array([sx, sy, sx, sy], np.float32))
    ok, encoded = cv2.imencode(
        ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, options.jpeg_quality]
    )
    if not ok:
        raise DatasetError(f"{record.path}: JPEG encoding failed")
    return encoded.tobytes(), record, True
