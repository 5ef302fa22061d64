"""Pascal VOC: read ``Annotations/*.xml`` + ``ImageSets/Main/<split>.txt`` into records, and write them.

A VOC root is any folder holding ``JPEGImages/``, ``Annotations/`` and ``ImageSets/Main/`` (for
example ``VOCdevkit/VOC2007``). The image of id ``X`` is ``JPEGImages/X.jpg`` as in the devkit; if
that file does not exist, the XML's ``<filename>`` (a plain name inside ``JPEGImages/``) is used.

Coordinates: VOC numbers pixels from 1 and its boxes are *inclusive* (``xmin..xmax`` are the first
and last pixel columns covered). Pixel ``i`` (1-based) covers the continuous interval ``[i-1, i]``,
so a VOC box covers ``[xmin-1, xmax] x [ymin-1, ymax]``: records get ``x1 = xmin - 1, y1 = ymin - 1,
x2 = xmax, y2 = ymax`` (0-based continuous, the record convention), and the width ``x2 - x1`` equals
the devkit's ``xmax - xmin + 1``. The writer applies the exact inverse.

XML files are untrusted: :mod:`yolov2.data.voc_xml` parses them with defusedxml's guards (entity
declarations and external references are refused, not expanded, so a "billion laughs" file is a
reject, not an out-of-memory), streaming, without building a tree.

Image ids: ``ImageSets/Main/<split>.txt`` has one id per line (the whole line: an id may hold
spaces), a per-class file ``<class>_<split>.txt`` the id and a flag -1, 0 or 1 (:func:`voc_split_ids`).
A missing or zero ``<size>`` is taken from the image header (``record.size_from_image``).

Rejects: a problem with the whole image (missing file, a file that is not a regular file, malformed
XML, size disagreement, truncated image, ...) is an image-level :class:`Reject`; a bad object
(unknown class name, missing or non-numeric coordinates, zero-area / inverted / non-finite /
entirely-outside box) is a box-level one and the image is kept without it. Unknown class names are
box-level because the usual cause is reading a dataset with a subset of its classes: the other
objects of the image are still good. Boxes partly outside the image are clipped and counted in
``record.clipped_boxes``. An image id that is not valid UTF-8, and (given ``confine_to``) a file
that resolves outside that folder through a symlink, are image-level rejects too
(:mod:`yolov2.data.paths`).
``strict=True`` raises :class:`DatasetError` at the first problem instead.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pyexpat
import re
import shutil
import xml.etree.ElementTree as std_et
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from yolov2.data.images import DEFAULT_MAX_PIXELS, check_image_against_record, inspect_image_file
from yolov2.data.paths import RootConfinement, dataset_file_reason, not_utf8_reason, printable, read_regular_file
from yolov2.data.records import ImageRecord, Reject, reject_or_raise, sanitize_box
from yolov2.data.voc_xml import XmlRefused, parse_voc_texts
from yolov2.errors import DatasetError
from yolov2.io import atomic_copy, atomic_output, atomic_write_text

# Darknet's data/voc.names order (alphabetical), the label order of every VOC model.
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

ALL_SPLIT = "all"  # record.split when every XML is read (split=None)

_LINE_SPACE = " \t\r\v\f"  # what surrounds an id on its line (ASCII whitespace; "\n" ends the line)
_PER_CLASS_LINE = re.compile(r"(\S(?:.*\S)?)[ \t]+(-1|0|1)")  # <image id> <flag>, the id possibly with spaces


@dataclass
class VocObject:
    """One ``<object>`` as written in the XML: VOC 1-based inclusive pixel coordinates (or None)."""

    name: str
    bndbox: tuple[float, float, float, float] | None  # xmin, ymin, xmax, ymax; None if unusable
    difficult: bool
    iscrowd: bool
    problem: str = ""  # why this object cannot be used, empty when fine


@dataclass
class VocAnnotation:
    """The parts of one VOC XML file we use."""

    filename: str | None
    width: int | None  # None when <size> is missing or not a positive integer
    height: int | None
    objects: list[VocObject] = field(default_factory=list)


def parse_voc_xml(path: str | Path) -> VocAnnotation:
    """Parse one VOC annotation file safely; raises :class:`DatasetError` naming the file."""
    try:
        data = read_regular_file(path)
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: annotation file is missing") from e
    except OSError as e:
        raise DatasetError(f"{path}: cannot read annotation file ({e.strerror})") from e
    try:
        texts = parse_voc_texts(data)
    except XmlRefused as e:
        raise DatasetError(
            f"{path}: XML declares entities or external references ({e.kind}); "
            "refused without expanding them (possible entity-expansion attack)"
        ) from e
    except pyexpat.ExpatError as e:
        raise DatasetError(f"{path}: malformed XML ({e})") from e
    if texts.root_tag != "annotation":
        raise DatasetError(f"{path}: root element is <{texts.root_tag}>, expected <annotation>")
    filename = (texts.root.get("filename") or "").strip() or None
    width = _positive_int(texts.root.get("size/width"))
    height = _positive_int(texts.root.get("size/height"))
    return VocAnnotation(filename, width, height, [_parse_object(obj) for obj in texts.objects])


def voc_spec_root(root: str | Path, spec: str) -> tuple[Path, str]:
    """A split spec ``[<subfolder>/]<imageset>`` -> (the VOC root holding it, the imageset name).

    ``VOC2007/trainval`` under ``root`` is ``(root/VOC2007, "trainval")``; a plain ``train`` is ``(root, "train")``.
    """
    sub, _, imageset = spec.rpartition("/")
    return (Path(root) / sub if sub else Path(root)), imageset


def voc_object_names(
    root: str | Path, image_id: str, confine_to: str | Path | RootConfinement | None = None
) -> list[str] | None:
    """The ``<object><name>`` texts of ``Annotations/<image_id>.xml`` (stripped; empty ones left out).

    For the driver's scan of a whole split (``class_names: auto``): no image is opened and no box is
    checked, about 0.15 ms a file. None when the file cannot be used (missing, not a regular file,
    outside ``confine_to``, malformed, refused, not an ``<annotation>``): the reader rejects it later
    with the reason, so a scan skips it.
    """
    if not _is_plain_name(image_id) or not_utf8_reason("image id", image_id):
        return None
    path = os.path.join(os.path.abspath(root), "Annotations", f"{image_id}.xml")
    if dataset_file_reason(path, confine_to):
        return None
    try:
        texts = parse_voc_texts(read_regular_file(path))
    except (OSError, XmlRefused, pyexpat.ExpatError):
        return None
    if texts.root_tag != "annotation":
        return None
    return [name for name in ((obj.get("name") or "").strip() for obj in texts.objects) if name]


def voc_split_ids(
    root: str | Path,
    split: str | None,
    class_names: Sequence[str] = VOC_CLASSES,
    strict: bool = False,
    record_split: str | None = None,
) -> tuple[list[str], list[Reject]]:
    """Image ids of ``ImageSets/Main/<split>.txt`` in file order (or of every XML, sorted, if None), and
    an image-level reject for each line that is not an entry (``strict``: a :class:`DatasetError`).

    Each of the devkit's two formats by its own rule, so an id may hold spaces (``pair 01``):

    - a split file ``<split>.txt``: one id per line, the whole line without its surrounding whitespace;
    - a per-class file ``<class>_<split>.txt`` (``<class>`` one of ``class_names``): the id, whitespace,
      then a flag -1, 0 or 1. It lists every image of the split (the flag says whether the class is in
      it), so every id is read; a line without such a flag is rejected, quoted, as ``file:line``.

    Lines are split on ``\\n`` only: ``str.splitlines`` would also cut an id at a form feed or U+2028.
    ``record_split`` names the split in the rejects (default ``split``).
    """
    root = Path(root)
    ann_dir = root / "Annotations"
    if not ann_dir.is_dir():
        raise DatasetError(
            f"{root}: not a VOC root, no Annotations/ folder (pass the folder holding JPEGImages/ "
            "Annotations/ ImageSets/, e.g. VOCdevkit/VOC2007)"
        )
    if split is None:
        return sorted(p.stem for p in ann_dir.iterdir() if p.suffix == ".xml"), []
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    try:
        text = read_regular_file(split_file).decode("utf-8-sig")
    except FileNotFoundError as e:
        main = root / "ImageSets" / "Main"
        listed = sorted(p.stem for p in main.glob("*.txt")) if main.is_dir() else []
        have = [stem for stem in listed if not _is_per_class(stem, class_names)]
        raise DatasetError(f"{split_file}: split file not found (splits here: {', '.join(have) or 'none'})") from e
    except OSError as e:
        raise DatasetError(f"{split_file}: cannot read split file ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise DatasetError(f"{split_file}: not UTF-8 text ({e})") from e
    per_class = _is_per_class(split, class_names)
    ids: list[str] = []
    rejects: list[Reject] = []
    for n, line in enumerate(text.split("\n"), start=1):
        entry = line.strip(_LINE_SPACE)
        if not entry:
            continue
        if not per_class:
            ids.append(entry)
            continue
        match = _PER_CLASS_LINE.fullmatch(entry)
        if match:
            ids.append(match.group(1))
            continue
        reason = (
            f"line {n} {entry!r} is not '<image id> <flag>' (flag -1, 0 or 1), the format of the "
            f"per-class file {split_file.name} (<class>_<split>.txt); fix or remove the line, or rename a "
            "file of plain ids"
        )
        rejects.append(reject_or_raise(f"{split_file}:{n}", reason, "image", None, record_split or split, strict))
    return ids, rejects


def read_voc(
    root: str | Path,
    split: str | None,
    class_names: Sequence[str] = VOC_CLASSES,
    check_images: bool = True,
    strict: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    confine_to: str | Path | RootConfinement | None = None,
) -> tuple[list[ImageRecord], list[Reject]]:
    """Read one split of a VOC root: ``(records, rejects)``, records in split-file order.

    ``split=None`` reads every XML in ``Annotations/`` and labels the records ``split="all"``.
    Labels index ``class_names`` (default: the 20 VOC classes in Darknet's order).
    ``check_images`` reads each image header (format, size, truncation; no pixel decode); an image
    whose ``<size>`` is missing or not positive has its header read anyway, for its size.
    ``confine_to``: a folder every XML and image must resolve inside (symlinks followed); others
    are image-level rejects (see :mod:`yolov2.data.paths`). The shard stage passes the dataset root.
    Images in = ``len(records)`` + image-level rejects; an id listed twice is rejected once.
    """
    root = Path(os.path.abspath(root))
    if not (root / "JPEGImages").is_dir():
        raise DatasetError(f"{root}: not a VOC root, no JPEGImages/ folder")
    if confine_to is not None and not isinstance(confine_to, RootConfinement):
        confine_to = RootConfinement(confine_to)  # one per call: each folder is resolved once
    records: list[ImageRecord] = []
    seen: set[str] = set()
    split_file = str(root / "ImageSets" / "Main" / f"{split}.txt") if split else str(root / "Annotations")
    ids, rejects = voc_split_ids(root, split, class_names, strict)
    for image_id in ids:
        if image_id in seen:
            rejects.append(
                reject_or_raise(
                    split_file, f"image id {image_id!r} is listed more than once", "image", image_id, split, strict
                )
            )
            continue
        seen.add(image_id)
        record, item_rejects = read_voc_item(
            root, image_id, split, class_names, check_images, strict, max_pixels, confine_to=confine_to
        )
        if record is not None:
            records.append(record)
        rejects.extend(item_rejects)
    return records, rejects


def read_voc_item(
    root: str | Path,
    image_id: str,
    split: str | None,
    class_names: Sequence[str] = VOC_CLASSES,
    check_images: bool = True,
    strict: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    confine_to: str | Path | RootConfinement | None = None,
) -> tuple[ImageRecord | None, list[Reject]]:
    """Read one image's annotation (the unit the shard stage parallelises).

    Returns ``(record, box_rejects)`` for a usable image, or ``(None, [one image-level reject])``.
    Without ``check_images`` the image is still read when ``<size>`` is missing or not positive: its
    header gives the size (``record.size_from_image``), as hand-labelled sets often lack ``<size>``.
    ``confine_to``: as in :func:`read_voc`; pass one :class:`RootConfinement` to many calls (the
    shard stage does) so that its folders are resolved once.
    """
    root = os.path.abspath(root)  # plain strings: pathlib costs more than the rest of a small file
    label_of = _label_index(class_names)
    split_name = split if split is not None else ALL_SPLIT
    xml_name = f"{image_id}.xml"  # pathlib's normalisation only matters for ids that are rejected below
    xml_path = source = (
        os.path.join(root, "Annotations", xml_name)
        if _is_plain_name(image_id)
        else str(Path(root, "Annotations", xml_name))
    )
    if confine_to is not None and not isinstance(confine_to, RootConfinement):
        confine_to = RootConfinement(confine_to)

    def image_reject(where: str, reason: str) -> tuple[None, list[Reject]]:
        return None, [reject_or_raise(where, reason, "image", image_id, split_name, strict)]

    bad_text = not_utf8_reason("image id", image_id)  # a file name's bytes (split=None lists the folder)
    if bad_text:
        return None, [reject_or_raise(printable(source), bad_text, "image", printable(image_id), split_name, strict)]
    if not _is_plain_name(image_id):
        return image_reject(source, f"image id {image_id!r} is not a plain file name")
    unusable = dataset_file_reason(xml_path, confine_to)
    if unusable:
        return image_reject(source, unusable)
    try:
        ann = parse_voc_xml(xml_path)
    except DatasetError as e:
        return image_reject(source, _reason(e, source))
    image_path = _image_path(root, image_id, ann.filename)
    if image_path is None:
        return image_reject(source, f"image file is missing: {os.path.join(root, 'JPEGImages', image_id + '.jpg')}")
    unusable = dataset_file_reason(image_path, confine_to)
    if unusable:
        return image_reject(image_path, unusable)

    width, height = ann.width, ann.height
    size_from_image = width is None or height is None  # hand-labelled sets often lack <size>
    info = None
    if check_images or size_from_image:
        try:
            info = inspect_image_file(image_path, max_pixels)
        except DatasetError as e:
            return image_reject(image_path, _reason(e, image_path))
    if width is None or height is None:  # i.e. size_from_image
        assert info is not None  # inspected above whenever size_from_image
        width, height = info.width, info.height
    record = ImageRecord(image_id, split_name, image_path, width, height, size_from_image=size_from_image)
    if info is not None:
        problem = check_image_against_record(info, record, source)
        if problem:
            return image_reject(source, problem)

    rejects: list[Reject] = []
    kept: list[tuple[int, VocObject]] = []
    for i, obj in enumerate(ann.objects):
        what = f"object {i} ({obj.name or 'no name'})"
        if obj.problem:
            rejects.append(reject_or_raise(source, f"{what}: {obj.problem}", "box", image_id, split_name, strict))
        elif obj.name not in label_of:
            reason = f"{what}: unknown class name {obj.name!r} (not among the {len(class_names)} class names)"
            rejects.append(reject_or_raise(source, reason, "box", image_id, split_name, strict, obj.name))
        else:
            kept.append((i, obj))
    # Plain Python per box: with a handful of boxes, NumPy's per-call cost would dominate the reader.
    boxes, labels, difficult, iscrowd, clipped_count = [], [], [], [], 0
    for i, obj in kept:
        assert obj.bndbox is not None  # kept objects have no problem, and only a problem object lacks a box
        xmin, ymin, xmax, ymax = obj.bndbox
        box = (xmin - 1.0, ymin - 1.0, xmax + 0.0, ymax + 0.0)  # 1-based inclusive -> 0-based continuous
        clipped, was_clipped, reason = sanitize_box(box, width, height)
        if reason:
            text = (
                f"object {i} ({obj.name}): {reason}: VOC box xmin,ymin,xmax,ymax = {_fmt_box(obj.bndbox)}"
                f" in a {width}x{height} image"
            )
            rejects.append(reject_or_raise(source, text, "box", image_id, split_name, strict))
            continue
        boxes.append(clipped)
        labels.append(label_of[obj.name])
        difficult.append(obj.difficult)
        iscrowd.append(obj.iscrowd)
        clipped_count += was_clipped
    record.boxes = np.array(boxes, np.float32).reshape(-1, 4)
    record.labels = np.array(labels, np.int32)
    record.difficult = np.array(difficult, bool)
    record.iscrowd = np.array(iscrowd, bool)
    record.clipped_boxes = clipped_count
    return record, rejects


def voc_annotation_xml(record: ImageRecord, class_names: Sequence[str]) -> str:
    """The VOC XML text of a record (inverse of the reader's coordinate conversion).

    Integral coordinates are written as integers (the VOC norm); others exactly (``repr``), so a
    read -> write -> read round trip is lossless. ``<iscrowd>1</iscrowd>`` is written only for crowd
    boxes (not part of VOC; the reader understands it), so COCO -> VOC keeps that flag too.
    """
    root = std_et.Element("annotation")
    std_et.SubElement(root, "folder").text = "JPEGImages"
    std_et.SubElement(root, "filename").text = Path(record.path).name
    size = std_et.SubElement(root, "size")
    std_et.SubElement(size, "width").text = str(int(record.width))
    std_et.SubElement(size, "height").text = str(int(record.height))
    std_et.SubElement(size, "depth").text = "3"
    std_et.SubElement(root, "segmented").text = "0"
    for box, label, difficult, crowd in zip(record.boxes, record.labels, record.difficult, record.iscrowd):
        if not 0 <= int(label) < len(class_names):
            raise DatasetError(f"record {record.image_id}: label {int(label)} is outside 0..{len(class_names) - 1}")
        obj = std_et.SubElement(root, "object")
        std_et.SubElement(obj, "name").text = class_names[int(label)]
        std_et.SubElement(obj, "pose").text = "Unspecified"
        std_et.SubElement(obj, "truncated").text = "0"
        std_et.SubElement(obj, "difficult").text = "1" if difficult else "0"
        if crowd:
            std_et.SubElement(obj, "iscrowd").text = "1"
        bnd = std_et.SubElement(obj, "bndbox")
        x1, y1, x2, y2 = (float(v) for v in box)
        for tag, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            std_et.SubElement(bnd, tag).text = _fmt_number(value)
    std_et.indent(root, space="\t")
    return std_et.tostring(root, encoding="unicode") + "\n"


def write_voc_annotation(record: ImageRecord, class_names: Sequence[str], path: str | Path) -> None:
    """Write one record as a VOC XML file (atomically)."""
    atomic_write_text(path, voc_annotation_xml(record, class_names))


def write_voc(
    records: Sequence[ImageRecord],
    class_names: Sequence[str],
    out_root: str | Path,
    split: str,
    images: Literal["copy", "hardlink", "symlink"] = "copy",
) -> list[ImageRecord]:
    """Write records as a VOC root: ``JPEGImages/<id><ext>``, ``Annotations/<id>.xml``, ``ImageSets/Main/<split>.txt``.

    Images are copied (or hard/symbolically linked) from ``record.path`` unless already in place.
    The split file lists the records in order and replaces any previous one. Returns the records
    with ``path`` pointing at the written images (what :func:`read_voc` will give back).
    """
    out_root = Path(os.path.abspath(out_root))
    img_dir = out_root / "JPEGImages"
    ann_dir = out_root / "Annotations"
    for d in (img_dir, ann_dir, out_root / "ImageSets" / "Main"):
        d.mkdir(parents=True, exist_ok=True)
    written: list[ImageRecord] = []
    for record in records:
        if not _is_plain_name(record.image_id):
            raise DatasetError(f"record {record.image_id!r}: image id is not a plain file name, cannot write VOC")
        src = Path(record.path)
        dst = img_dir / f"{record.image_id}{src.suffix or '.jpg'}"
        _place_image(src, dst, images)
        out = dataclasses.replace(record, path=str(dst), split=split)
        write_voc_annotation(out, class_names, ann_dir / f"{record.image_id}.xml")
        written.append(out)
    ids = "".join(f"{r.image_id}\n" for r in records)
    atomic_write_text(out_root / "ImageSets" / "Main" / f"{split}.txt", ids)
    return written


# ---------------------------------------------------------------------------------------------


def _reason(error: DatasetError, source: str) -> str:
    """The message of an error without its leading ``<source>: `` (the Reject carries the source)."""
    text = str(error)
    prefix = f"{source}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def _label_index(class_names: Sequence[str]) -> dict[str, int]:
    index = {name: i for i, name in enumerate(class_names)}
    if len(index) != len(class_names):
        raise DatasetError(f"class names contain duplicates: {list(class_names)}")
    return index


def _positive_int(text: str | None) -> int | None:
    try:
        value = float((text or "").strip())
    except ValueError:
        return None
    return int(value) if math.isfinite(value) and value.is_integer() and value > 0 else None


def _parse_object(obj: dict[str, str]) -> VocObject:
    """One ``<object>`` from its texts (keys as in :data:`yolov2.data.voc_xml.OBJECT_FIELDS`)."""
    name = (obj.get("name") or "").strip()
    difficult, bad_flag = _flag(obj.get("difficult"), "difficult")
    iscrowd, bad_crowd = _flag(obj.get("iscrowd"), "iscrowd")
    problem = "" if name else "no <name>"
    problem = problem or bad_flag or bad_crowd
    bndbox = None
    values = []
    for tag in ("xmin", "ymin", "xmax", "ymax"):
        text = obj.get(f"bndbox/{tag}")
        if text is None:
            problem = problem or f"<bndbox> has no <{tag}>"
            break
        try:
            values.append(float(text.strip()))
        except ValueError:
            problem = problem or f"<bndbox><{tag}> is not a number: {text.strip()!r}"
            break
    else:
        bndbox = (values[0], values[1], values[2], values[3])
    return VocObject(name, bndbox, difficult, iscrowd, problem)


def _flag(text: str | None, tag: str) -> tuple[bool, str]:
    value = (text or "0").strip() or "0"
    if value in ("0", "1"):
        return value == "1", ""
    return False, f"<{tag}> is {value!r}, expected 0 or 1"


def _is_plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\x00" not in name


def _image_path(root: str, image_id: str, filename: str | None) -> str | None:
    """``JPEGImages/<id>.jpg``, else the XML's ``<filename>`` there; None when neither exists.

    Any existing file counts, not only regular ones: a FIFO or folder in its place is then refused
    by its type, not reported as missing.
    """
    candidate = os.path.join(root, "JPEGImages", f"{image_id}.jpg")
    if os.path.exists(candidate):
        return candidate
    if filename and _is_plain_name(filename):
        candidate = os.path.join(root, "JPEGImages", filename)
        if os.path.exists(candidate):
            return candidate
    return None


def _is_per_class(split: str, class_names: Sequence[str]) -> bool:
    """Whether ``ImageSets/Main/<split>.txt`` is a per-class file ``<class>_<imageset>.txt``."""
    return any(split.startswith(f"{name}_") and len(split) > len(name) + 1 for name in class_names)


def _place_image(src: Path, dst: Path, how: str) -> None:
    if dst.exists() and src.exists() and os.path.samefile(src, dst):
        return
    if not src.is_file():
        raise DatasetError(f"{src}: image file is missing, cannot write it to {dst}")
    if how == "copy":
        atomic_copy(src, dst)
    elif how in ("hardlink", "symlink"):
        with atomic_output(dst, suffix=".link.tmp", mode=None) as tmp:  # mode=None: chmod would follow a symlink
            tmp.unlink()  # the link takes the temporary name
            try:
                os.link(src, tmp) if how == "hardlink" else os.symlink(os.path.abspath(src), tmp)
            except OSError:  # e.g. across file systems: fall back to a copy
                shutil.copyfile(src, tmp)
    else:
        raise ValueError(f"images must be 'copy', 'hardlink' or 'symlink', got {how!r}")


def _fmt_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _fmt_box(box: Sequence[float]) -> str:
    return ",".join(_fmt_number(v) if np.isfinite(v) else str(v) for v in box)
