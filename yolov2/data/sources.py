"""From a prepared dataset folder to the list of images to shard, whatever the format.

A split of ours (``train``) is made of one or more of the dataset's own splits ("split specs"):

- VOC: ``[<subfolder>/]<imageset>``: ``VOC2007/trainval`` reads ``<root>/VOC2007/ImageSets/Main/trainval.txt``;
  a plain ``train`` reads ``<root>/ImageSets/Main/train.txt``.
- COCO: ``<name>``: ``<root>/annotations/instances_<name>.json`` with images in ``<root>/<name>/``.
- YOLO: ``<name>``: images in ``<root>/images/<name>/``, labels in ``<root>/labels/<name>/``, class names
  in ``<root>/classes.txt`` (or the only ``*.names`` file in the root).

Listing is cheap (no annotation parsing for VOC/YOLO): each :class:`ShardItem` carries a picklable
loader that a shard task calls, so annotation parsing runs in parallel with the image I/O.

Every reader is confined to the dataset root: an annotation, label or image file that resolves
outside it through a symlink is rejected ("points outside the dataset root"), so a dataset folder
cannot pull unrelated files into shared shards; one that is not a regular file (a FIFO, a socket, a
device, a folder) is rejected by its type, unopened. With ``strict`` every reject is an error, an id
listed twice in a split included. For YOLO, a label file without an image is an
image-level reject (counted as an input), as :func:`yolov2.data.yolo_txt.read_yolo_txt` does.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yolov2.data.coco import read_coco, read_coco_categories
from yolov2.data.images import IMAGE_EXTENSIONS
from yolov2.data.paths import RootConfinement, dataset_file_reason, printable
from yolov2.data.records import ImageRecord, Reject, reject_or_raise
from yolov2.data.shard_build import ShardItem
from yolov2.data.voc import VOC_CLASSES, read_voc_item, voc_split_ids
from yolov2.data.yolo_txt import orphan_label_rejects, read_yolo_item
from yolov2.errors import DatasetError
from yolov2.io import read_names


@dataclass
class SplitListing:
    """The images of one of our splits, in a fixed order, plus what was rejected while listing."""

    items: list[ShardItem] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)


def list_split_items(
    prepared: dict[str, Any], split: str, specs: Sequence[str], class_names: Sequence[str] | None, strict: bool = False
) -> SplitListing:
    """List one split of the dataset described by the prepare stage's manifest (format, root, class_names)."""
    fmt, root = prepared["format"], Path(prepared["root"])
    names = list(class_names or prepared.get("class_names") or [])
    listing = SplitListing()
    seen: set[str] = set()
    for spec in specs:
        if fmt == "voc":
            _list_voc(root, spec, split, names or list(VOC_CLASSES), strict, listing, seen)
        elif fmt == "coco":
            _list_coco(root, spec, split, names, strict, listing, seen)
        elif fmt == "yolo":
            _list_yolo(root, spec, split, names, strict, listing, seen)
        else:
            raise DatasetError(f"unknown dataset format {fmt!r} (voc, coco or yolo)")
    return listing


def _add(
    listing: SplitListing,
    seen: set[str],
    image_id: str,
    image_path: str | Path,
    load,
    source: str,
    split: str,
    strict: bool,
    annotation: str,
) -> None:
    """List one image; a second one with the same id is an image-level reject (``strict``: an error).

    ``source``: the file that lists the image; ``annotation``: the one its size and boxes come from.
    """
    if image_id in seen:
        image_id = printable(image_id)  # a YOLO stem is a file name: maybe not UTF-8
        reason = f"image id {image_id!r} appears twice in split {split}; remove the second entry"
        listing.rejects.append(reject_or_raise(printable(source), reason, "image", image_id, split, strict))
        return
    seen.add(image_id)
    listing.items.append(ShardItem(f"{len(listing.items):08d}", str(image_path), load, annotation))


def _list_voc(
    root: Path, spec: str, split: str, names: list[str], strict: bool, listing: SplitListing, seen: set[str]
) -> None:
    sub, _, imageset = spec.rpartition("/")
    voc_root = (root / sub) if sub else root
    listing.class_names = names
    source = str(voc_root / "ImageSets" / "Main" / f"{imageset}.txt")
    # One confinement and one names tuple shared by every item: pickled once per shard task, and the
    # task resolves the dataset folders once instead of once per file.
    confine, names_tuple = RootConfinement(root), tuple(names)
    image_dir = os.path.join(voc_root, "JPEGImages")  # strings: pathlib per item cost more than the listing
    ann_dir = os.path.join(voc_root, "Annotations")
    ids, line_rejects = voc_split_ids(voc_root, imageset, names_tuple, strict, record_split=split)
    listing.rejects.extend(line_rejects)
    for image_id in ids:
        load = functools.partial(
            read_voc_item, voc_root, image_id, split, names_tuple, False, strict, confine_to=confine
        )
        _add(
            listing,
            seen,
            image_id,
            os.path.join(image_dir, f"{image_id}.jpg"),
            load,
            source,
            split,
            strict,
            os.path.join(ann_dir, f"{image_id}.xml"),
        )


def _ready(record: ImageRecord) -> tuple[ImageRecord, list[Reject]]:
    return record, []


def _list_coco(
    root: Path, spec: str, split: str, names: list[str], strict: bool, listing: SplitListing, seen: set[str]
) -> None:
    annotation = root / "annotations" / f"instances_{spec}.json"
    unusable = dataset_file_reason(annotation, root)
    if unusable:  # checked before anything reads the file
        raise DatasetError(f"{annotation}: {unusable}")
    if not names:
        names = list(read_coco_categories(annotation).names)
    listing.class_names = names
    records, rejects = read_coco(
        annotation, root / spec, split, check_images=False, strict=strict, class_names=names, confine_to=root
    )
    listing.rejects.extend(rejects)
    for record in records:
        _add(
            listing,
            seen,
            record.image_id,
            Path(record.path),
            functools.partial(_ready, record),
            str(annotation),
            split,
            strict,
            f"{annotation}: image {record.image_id}",
        )


def _list_yolo(
    root: Path, spec: str, split: str, names: list[str], strict: bool, listing: SplitListing, seen: set[str]
) -> None:
    if not names:
        names = read_names(_yolo_names_file(root))
    listing.class_names = names
    image_dir, label_dir = root / "images" / spec, root / "labels" / spec
    if not image_dir.is_dir():
        raise DatasetError(f"{image_dir}: YOLO image folder not found (expected images/{spec}/ and labels/{spec}/)")
    # Every entry is listed, whatever its type (a dangling link, a FIFO, a folder), so the reader names it.
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    for path in images:
        load = functools.partial(
            read_yolo_item, path, label_dir / f"{path.stem}.txt", tuple(names), split, strict, confine_to=root
        )
        _add(listing, seen, path.stem, path, load, str(path), split, strict, str(path))
    listing.rejects.extend(orphan_label_rejects(label_dir, {p.stem for p in images}, split, strict))


def _yolo_names_file(root: Path) -> Path:
    if (root / "classes.txt").is_file():
        return root / "classes.txt"
    found = sorted(root.glob("*.names"))
    if len(found) != 1:
        raise DatasetError(
            f"{root}: need classes.txt or exactly one *.names file with the class names (found {len(found)})"
        )
    return found[0]
