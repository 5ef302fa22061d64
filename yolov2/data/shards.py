"""WebDataset tar shards: a thin, deterministic writer and a webdataset-based reader.

Why our own writer: webdataset's ``ShardWriter`` goes through ``tarfile``'s stream mode, which costs
about half the throughput of plain ``tar`` on this machine. A tar member is just a 512-byte ustar
header, the raw bytes and zero padding to 512, so we write exactly that, with fixed metadata (mtime 0,
uid/gid 0, mode 0444, no user names): the same samples always give byte-identical shards. Reading
goes through ``webdataset`` (the format's reference implementation), so any WebDataset user can
read our shards.

A sample is ``<key>.jpg`` (the image bytes) followed by ``<key>.json`` (its record as JSON).
Keys must not contain dots (WebDataset splits a member name at its first dot).
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import BinaryIO

import numpy as np

from yolov2.data.images import DEFAULT_MAX_PIXELS, ImageInfo, check_image_against_record, inspect_image
from yolov2.data.paths import read_regular_file
from yolov2.data.records import ImageRecord, Reject, reject_message
from yolov2.errors import DatasetError

BLOCK = 512
_JPEG_SOI = b"\xff\xd8\xff"
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_\-/]{1,90}$")


def _octal(value: int, width: int) -> bytes:
    """A NUL-terminated, zero-padded octal field of ``width`` bytes."""
    text = format(value, "o").encode()
    if len(text) > width - 1:
        raise ValueError(f"value {value} does not fit a {width}-byte tar field")
    return text.rjust(width - 1, b"0") + b"\0"


def tar_header(name: str, size: int) -> bytes:
    """A POSIX ustar header for a regular file with fixed, reproducible metadata."""
    encoded = name.encode("utf-8")
    if len(encoded) > 100:
        raise ValueError(f"tar member name too long ({len(encoded)} > 100 bytes): {name!r}")
    size_field = _octal(size, 12)  # < 8 GiB
    # Only the name and size vary: the checksum is the fixed fields' sum (spaces in its own field) plus theirs.
    checksum = _FIXED_HEADER_SUM + sum(encoded) + sum(size_field)
    return b"".join((encoded.ljust(100, b"\0"), _HEADER_MODE_IDS, size_field, _HEADER_MTIME,
                     _octal(checksum, 7), b" ", _HEADER_TAIL))


_HEADER_MODE_IDS = _octal(0o444, 8) + _octal(0, 8) + _octal(0, 8)  # mode, uid, gid: bytes 100..124
_HEADER_MTIME = _octal(0, 12)  # bytes 136..148
_HEADER_TAIL = (b"0" + b"\0" * 100 + b"ustar\0" + b"00").ljust(BLOCK - 156, b"\0")  # type, link name, magic, version
_FIXED_HEADER_SUM = sum(_HEADER_MODE_IDS) + sum(_HEADER_MTIME) + 8 * ord(" ") + sum(_HEADER_TAIL)


def member_bytes(name: str, data: bytes) -> tuple[bytes, bytes, bytes]:
    """(header, data, padding) of one tar member; written separately to avoid copying big images."""
    padding = b"\0" * ((-len(data)) % BLOCK)
    return tar_header(name, len(data)), data, padding


class TarShardWriter:
    """Writes samples to one open binary stream as a tar archive.

    Use as a context manager; :meth:`close` writes the two zero blocks that end a tar archive
    (it does not close the underlying stream, which the caller owns).
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.bytes_written = 0
        self.count = 0

    def write_member(self, name: str, data: bytes) -> None:
        for part in member_bytes(name, data):
            self._stream.write(part)
            self.bytes_written += len(part)

    def write_sample(self, key: str, image_bytes: bytes, record: ImageRecord, image_ext: str = "jpg") -> None:
        if not _KEY_PATTERN.match(key):
            raise ValueError(f"invalid sample key {key!r}: use letters, digits, '_', '-' (no dots)")
        header, data, padding = member_bytes(f"{key}.{image_ext}", image_bytes)
        # Three writes per sample (the image's header, its bytes, then everything small after it):
        # each write call costs about as much as copying a few KB.
        rest = padding + b"".join(member_bytes(f"{key}.json", record_json(record)))
        for part in (header, data, rest):
            self._stream.write(part)
        self.bytes_written += len(header) + len(data) + len(rest)
        self.count += 1

    def close(self) -> None:
        self._stream.write(b"\0" * (2 * BLOCK))
        self.bytes_written += 2 * BLOCK

    def __enter__(self) -> "TarShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


def record_json(record: ImageRecord) -> bytes:
    """The record as compact, key-sorted UTF-8 JSON (deterministic bytes)."""
    return _RECORD_ENCODER.encode(record.to_dict()).encode()


# json.dumps with options builds a new encoder per call; this one is immutable configuration.
_RECORD_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def write_shard_bytes(samples: Iterable[tuple[str, bytes, ImageRecord]]) -> bytes:
    """A whole shard in memory (handy for tests and small shards)."""
    buffer = io.BytesIO()
    with TarShardWriter(buffer) as writer:
        for key, image_bytes, record in samples:
            writer.write_sample(key, image_bytes, record)
    return buffer.getvalue()


def iter_shard_samples(urls: str | list[str]) -> Iterator[tuple[str, bytes, ImageRecord]]:
    """Read shards back with webdataset: yields ``(key, image_bytes, record)`` in file order."""
    import webdataset as wds

    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    for sample in dataset:
        record = ImageRecord.from_dict(json.loads(sample["json"]))
        yield sample["__key__"], sample["jpg"], record


# ---------------------------------------------------------------------------------------------
# Writing one planned shard from dataset items (what a shard task runs)
# ---------------------------------------------------------------------------------------------


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
            if problem is None and (mismatch := check_image_against_record(info, record, item.annotation or where)):
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
        scale = options.max_side / longest
        new_w, new_h = max(1, round(record.width * scale)), max(1, round(record.height * scale))
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        sx, sy = new_w / record.width, new_h / record.height
        record = replace(record, width=new_w, height=new_h,
                         boxes=record.boxes * np.array([sx, sy, sx, sy], np.float32))
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, options.jpeg_quality])
    if not ok:
        raise DatasetError(f"{record.path}: JPEG encoding failed")
    return encoded.tobytes(), record, True
