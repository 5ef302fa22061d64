"""YOLO txt labels (Darknet / Ultralytics): one ``<stem>.txt`` per image, a names file; read and write.

The names file itself is read and written by :func:`yolov2.io.read_names` / :func:`yolov2.io.write_names`.

Each label line is ``<class> <cx> <cy> <w> <h>``: a class index into the names file and the box
centre and size **normalised** by the image width/height (cxcywh in [0, 1]). Records hold absolute
0-based continuous xyxy pixels, so reading needs each image's size: it comes from the image header
(:func:`yolov2.data.images.inspect_image`, which also checks the image, so every image is checked).

Pairing: image ``<image_dir>/<stem>.<ext>`` goes with ``<label_dir>/<stem>.txt`` and becomes the
record ``image_id=<stem>``. A missing label file means an image with no objects (the YOLO
convention for background images); an empty one too. A label file with no image is an image-level
reject (it is counted as an input), so images in + orphan labels = records + image-level rejects.

A file name that is not valid UTF-8 is an image-level reject naming the file (bytes shown as ``\\xNN``),
and so, when a ``confine_to`` folder is given (the shard stage passes the dataset root), is an image
or label file that resolves outside it through a symlink (:mod:`yolov2.data.paths`).

Line problems (wrong column count, a non-number, NaN, a value outside [0, 1], a class id that is not
an integer in ``0..C-1``) are box-level rejects naming the file and line; a zero-area box is too.
Corners that overshoot the image by less than ``EDGE_TOLERANCE`` (normalised) are rounding from
the text format and are snapped silently; larger overshoots are clipped and counted in
``record.clipped_boxes``.

YOLO txt has no ``difficult`` or ``iscrowd`` flag: records read from it have neither, and the
writer leaves such boxes out by default, as Darknet's ``voc_label.py`` (difficult) and the
Ultralytics COCO converter (crowd) do.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from yolov2.data.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, check_image_against_record, inspect_image_file
from yolov2.data.paths import dataset_file_reason, not_utf8_reason, printable, read_regular_file
from yolov2.data.records import ImageRecord, Reject, reject_or_raise, sanitize_boxes
from yolov2.errors import DatasetError
from yolov2.io import atomic_write_text, write_names

EDGE_TOLERANCE = 1e-5  # normalised units; the writer's 6 decimals are off by at most 1e-6


def read_yolo_txt(
    image_dir: str | Path,
    label_dir: str | Path,
    class_names: Sequence[str],
    split: str,
    images: Sequence[str | Path] | None = None,
    strict: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    confine_to: str | Path | None = None,
) -> tuple[list[ImageRecord], list[Reject]]:
    """Read YOLO txt labels: ``(records, rejects)``, records sorted by image file name.

    ``images``: the image files to read (e.g. the lines of a Darknet ``train.txt``, relative to
    ``image_dir`` or absolute); default every image file directly in ``image_dir``, plus an
    image-level reject for each label file in ``label_dir`` without an image.
    ``confine_to``: a folder every image and label file must resolve inside (see :func:`read_yolo_item`).
    """
    image_dir = Path(os.path.abspath(image_dir))
    label_dir = Path(os.path.abspath(label_dir))
    rejects: list[Reject] = []
    if images is None:
        if not image_dir.is_dir():
            raise DatasetError(f"{image_dir}: image folder not found")
        # Every entry, whatever its type: a FIFO or folder named like an image is rejected by name, not skipped.
        paths = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        rejects.extend(orphan_label_rejects(label_dir, {p.stem for p in paths}, split, strict))
    else:
        paths = [image_dir / p for p in images]
    by_stem: dict[str, list[Path]] = {}
    for p in paths:
        by_stem.setdefault(p.stem, []).append(p)
    records: list[ImageRecord] = []
    for p in paths:
        if len(by_stem[p.stem]) > 1:
            names = ", ".join(q.name for q in by_stem[p.stem])
            reason = f"several images share the stem {p.stem!r} ({names}), so {p.stem}.txt is ambiguous"
            rejects.append(reject_or_raise(printable(p), printable(reason), "image", printable(p.stem), split, strict))
            continue
        record, item_rejects = read_yolo_item(
            p, label_dir / f"{p.stem}.txt", class_names, split, strict, max_pixels, confine_to=confine_to
        )
        if record is not None:
            records.append(record)
        rejects.extend(item_rejects)
    return records, rejects


def orphan_label_rejects(label_dir: Path, image_stems: set[str], split: str, strict: bool) -> list[Reject]:
    """An image-level reject (or, ``strict``, an error) for each label file in ``label_dir`` without an image:
    it counts as an input, so nothing is dropped silently."""
    orphans = sorted(p for p in label_dir.glob("*.txt") if p.stem not in image_stems) if label_dir.is_dir() else []
    return [
        reject_or_raise(printable(p), "label file without an image", "image", printable(p.stem), split, strict)
        for p in orphans
    ]


def read_yolo_item(
    image_path: str | Path,
    label_path: str | Path,
    class_names: Sequence[str],
    split: str,
    strict: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    confine_to: str | Path | None = None,
) -> tuple[ImageRecord | None, list[Reject]]:
    """One image and its label file: ``(record, box_rejects)`` or ``(None, [image-level reject])``.

    ``confine_to``: when given, an image or label file that resolves (symlinks followed) outside this
    folder is an image-level reject; the shard stage passes the dataset root. An image or label file
    that is not a regular file (a FIFO, a device, ...) is one too, and is never opened.
    """
    image_path, label_path = Path(image_path), Path(label_path)
    image_id = image_path.stem
    bad_text = not_utf8_reason("image path", image_path)
    if bad_text:
        return None, [reject_or_raise(printable(image_path), bad_text, "image", printable(image_id), split, strict)]
    for path in (image_path, label_path):
        unusable = dataset_file_reason(path, confine_to)
        if unusable:
            return None, [reject_or_raise(str(path), unusable, "image", image_id, split, strict)]
    try:
        info = inspect_image_file(image_path, max_pixels)
    except DatasetError as e:
        reason = str(e).removeprefix(f"{image_path}: ")
        return None, [reject_or_raise(str(image_path), reason, "image", image_id, split, strict)]
    record = ImageRecord(image_id, split, str(image_path), info.width, info.height)
    problem = check_image_against_record(info, record, str(image_path))
    if problem:  # sizes agree by construction: only the extension can be wrong here
        return None, [reject_or_raise(str(image_path), problem, "image", image_id, split, strict)]
    try:
        text = read_regular_file(label_path).decode("utf-8-sig")
    except FileNotFoundError:
        return record, []  # no label file: an image with no objects
    except (OSError, UnicodeDecodeError) as e:
        return None, [
            reject_or_raise(str(label_path), f"cannot read label file ({e})", "image", image_id, split, strict)
        ]

    rejects: list[Reject] = []
    rows: list[tuple[int, int, list[float]]] = []  # (line number, class, [cx, cy, w, h])
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parsed = _parse_line(line, len(class_names))
        if isinstance(parsed, _BadLine):
            reason = f"line {n}: {parsed.reason}"
            rejects.append(
                reject_or_raise(str(label_path), reason, "box", image_id, split, strict, parsed.unknown_class)
            )
        else:
            rows.append((n, parsed[0], parsed[1]))
    norm = np.array([r[2] for r in rows], np.float64).reshape(-1, 4)
    xyxy = np.concatenate([norm[:, :2] - norm[:, 2:] / 2, norm[:, :2] + norm[:, 2:] / 2], axis=1)
    snap = (xyxy > -EDGE_TOLERANCE) & (xyxy < 1 + EDGE_TOLERANCE)
    xyxy = np.where(snap, xyxy.clip(0, 1), xyxy) * [info.width, info.height, info.width, info.height]
    clipped, was_clipped, reasons = sanitize_boxes(xyxy, info.width, info.height)
    good = reasons == ""
    for (n, _, values), reason in zip(rows, reasons):
        if reason:
            text_ = f"line {n}: {reason}: cx cy w h = {' '.join(map(str, values))}"
            rejects.append(reject_or_raise(str(label_path), text_, "box", image_id, split, strict))
    record.boxes = clipped[good]
    record.labels = np.array([r[1] for r, g in zip(rows, good) if g], np.int32)
    record.difficult = np.zeros(len(record.boxes), bool)
    record.iscrowd = np.zeros(len(record.boxes), bool)
    record.clipped_boxes = int(was_clipped.sum())
    return record, rejects


def yolo_label_text(record: ImageRecord, num_classes: int, skip_difficult: bool = True, skip_crowd: bool = True) -> str:
    """The label file text of one record: ``<label> <cx> <cy> <w> <h>`` normalised, 6 decimals."""
    w, h = float(record.width), float(record.height)
    lines = []
    for box, label, difficult, crowd in zip(record.boxes, record.labels, record.difficult, record.iscrowd):
        if (skip_difficult and difficult) or (skip_crowd and crowd):
            continue
        if not 0 <= int(label) < num_classes:
            raise DatasetError(f"record {record.image_id}: label {int(label)} is outside 0..{num_classes - 1}")
        x1, y1, x2, y2 = (float(v) for v in box)
        cx, cy, bw, bh = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h
        lines.append(f"{int(label)} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}\n")
    return "".join(lines)


def write_yolo_txt(
    records: Sequence[ImageRecord],
    class_names: Sequence[str],
    label_dir: str | Path,
    names_path: str | Path | None = None,
    skip_difficult: bool = True,
    skip_crowd: bool = True,
) -> int:
    """Write ``<label_dir>/<image stem>.txt`` for every record (empty for no boxes) and the names file.

    Images are not copied: read back with ``image_dir`` = the records' image folder. Returns how
    many boxes were left out (difficult / crowd, which the format cannot mark).
    """
    label_dir = Path(label_dir)
    stems: dict[str, str] = {}
    for r in records:
        stem = Path(r.path).stem
        if stem in stems:
            raise DatasetError(f"{r.path}: same file stem as {stems[stem]}; their label files would collide")
        stems[stem] = r.path
    label_dir.mkdir(parents=True, exist_ok=True)
    skipped = 0
    for r in records:
        text = yolo_label_text(r, len(class_names), skip_difficult, skip_crowd)
        skipped += r.num_boxes - text.count("\n")
        atomic_write_text(label_dir / f"{Path(r.path).stem}.txt", text)
    if names_path is not None:
        write_names(class_names, names_path)
    return skipped


# ---------------------------------------------------------------------------------------------


class _BadLine(NamedTuple):
    """Why a label line is unusable; ``unknown_class``: its class id, when an integer outside the names."""

    reason: str
    unknown_class: str | None = None


def _parse_line(line: str, num_classes: int) -> tuple[int, list[float]] | _BadLine:
    """``(class, [cx, cy, w, h])`` or why the line is unusable."""
    parts = line.split()
    if len(parts) != 5:
        return _BadLine(f"{len(parts)} columns, expected 5 (class cx cy w h)")
    try:
        values = [float(v) for v in parts]
    except ValueError:
        return _BadLine(f"not a number in {line.strip()!r}")
    cls, coords = values[0], values[1:]
    if not math.isfinite(cls) or not cls.is_integer() or not 0 <= cls < num_classes:
        reason = f"unknown class id {parts[0]} (the names file has {num_classes} classes, ids 0..{num_classes - 1})"
        return _BadLine(reason, str(int(cls)) if math.isfinite(cls) and cls.is_integer() else None)
    if not all(math.isfinite(v) for v in coords):
        return _BadLine(f"non-finite value in {line.strip()!r}")
    if not all(0.0 <= v <= 1.0 for v in coords):
        return _BadLine(f"value outside [0, 1] in {line.strip()!r} (coordinates must be normalised)")
    return int(cls), coords
