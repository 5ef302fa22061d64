"""From a prepared dataset folder to the list of images to shard, whatever the format.

A split of ours (``train``) is made of one or more of the dataset's own splits ("split specs"):

- VOC: ``[<subfolder>/]<imageset>``: ``VOC2007/trainval`` reads ``<root>/VOC2007/ImageSets/Main/trainval.txt``;
  a plain ``train`` reads ``<root>/ImageSets/Main/train.txt``.
- COCO: ``<name>``: ``<root>/annotations/instances_<name>.json`` with images in ``<root>/<name>/``.
- YOLO: ``<name>``: images in ``<root>/images/<name>/``, labels in ``<root>/labels/<name>/``, class names
  in ``<root>/classes.txt``, the only ``*.names`` file or a ``data.yaml`` (:mod:`yolov2.data.class_names`).

Listing is cheap (no annotation parsing for VOC/YOLO): each :class:`ShardItem` carries a picklable
loader that a shard task calls, so annotation parsing runs in parallel with the image I/O.

Every reader is confined to the dataset root: an annotation, label or image file that resolves
outside it through a symlink is rejected ("points outside the dataset root"), so a dataset folder
cannot pull unrelated files into shared shards; one that is not a regular file (a FIFO, a socket, a
device, a folder) is rejected by its type, unopened. With ``strict`` every reject is an error, an id
listed twice in a split included. For YOLO, a label file without an image is an
image-level reject (counted as an input), as :func:`yolov2.data.yolo_txt.read_yolo_txt` does.

A split of ours can also be carved out of another (:func:`list_splits`: a ``val`` split taken from
``train`` by image id, :mod:`yolov2.data.val_split`): the train specs are listed once for their ids, then
each of the two splits is listed with an image-id predicate (``keep``), so every reader works unchanged
and each record carries its own split's name.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yolov2.data.class_names import yolo_class_names
from yolov2.data.coco import read_coco, read_coco_categories
from yolov2.data.imagefolder import scan_image_folder
from yolov2.data.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, inspect_image_file
from yolov2.data.paths import RootConfinement, dataset_file_reason, printable
from yolov2.data.records import ImageRecord, Reject, class_only_record, reject_or_raise
from yolov2.data.shard_build import ShardItem
from yolov2.data.val_split import carve_val
from yolov2.data.voc import VOC_CLASSES, read_voc_item, voc_spec_root, voc_split_ids
from yolov2.data.yolo_txt import orphan_label_rejects, read_yolo_item
from yolov2.errors import ConfigError, DatasetError

Keep = Callable[[str | None], bool]  # which image ids (None: rejects naming no image) a listing keeps


@dataclass
class SplitListing:
    """The images of one of our splits, in a fixed order, plus what was rejected while listing.

    ``image_ids[i]`` is the id of ``items[i]``."""

    items: list[ShardItem] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    image_ids: list[str] = field(default_factory=list)


def list_splits(
    prepared: dict[str, Any],
    splits: Mapping[str, Sequence[str]],
    class_names: Sequence[str],
    strict: bool = False,
    val_fraction: float = 0.0,
    val_seed: int = 0,
) -> dict[str, SplitListing]:
    """Every split of ours (``splits``: our split -> the dataset's specs), in order; with ``val_fraction > 0``
    also ``val``, right after ``train``, carved out of train's images by id (:func:`carve_val`).

    For COCO a carve reads the train annotation file three times (ids, then each of the two splits).
    """
    if val_fraction > 0 and ("val" in splits or "train" not in splits):
        raise ConfigError(
            "data.val_fraction carves a val split out of train only when data.splits has a train split and no "
            f"val split (it has {', '.join(splits)}); set data.val_fraction: 0 or change data.splits"
        )
    listings: dict[str, SplitListing] = {}
    for split, specs in splits.items():
        if split == "train" and val_fraction > 0:
            listings["train"], listings["val"] = _carved(prepared, specs, class_names, strict, val_fraction, val_seed)
        else:
            listings[split] = list_split_items(prepared, split, specs, class_names, strict)
    return listings


def _carved(
    prepared: dict[str, Any], specs: Sequence[str], class_names: Sequence[str], strict: bool, fraction: float, seed: int
) -> tuple[SplitListing, SplitListing]:
    """The train and val listings of train's specs, val being ``carve_val`` of train's image ids."""
    ids = list_split_items(prepared, "train", specs, class_names, strict).image_ids
    val_ids = set(carve_val(ids, fraction, seed).val)
    train = list_split_items(prepared, "train", specs, class_names, strict, keep=lambda i: i not in val_ids)
    val = list_split_items(prepared, "val", specs, class_names, strict, keep=lambda i: i in val_ids)
    return train, val


def list_split_items(
    prepared: dict[str, Any],
    split: str,
    specs: Sequence[str],
    class_names: Sequence[str] | None,
    strict: bool = False,
    keep: Keep | None = None,
) -> SplitListing:
    """List one split of the dataset described by the prepare stage's manifest (format, root, class_names).

    ``class_names`` None: the manifest's, else the dataset's own list without reading annotations (VOC: the
    20 VOC classes; COCO: each file's categories; YOLO: its names file); the shard stage always passes them.
    ``keep``: only images whose id it accepts are listed, and only rejects whose ``image_id`` it accepts
    (``None`` for a reject that names no image, such as a bad split-file line).
    """
    fmt, root = prepared["format"], Path(prepared["root"])
    names = list(class_names or prepared.get("class_names") or [])
    listing = SplitListing()
    seen: set[str] = set()
    for spec in specs:
        if fmt == "voc":
            _list_voc(root, spec, split, names or list(VOC_CLASSES), strict, listing, seen, keep)
        elif fmt == "coco":
            _list_coco(root, spec, split, names, strict, listing, seen, keep)
        elif fmt == "yolo":
            _list_yolo(root, spec, split, names, strict, listing, seen, keep)
        else:
            raise DatasetError(f"unknown dataset format {fmt!r} (voc, coco or yolo)")
    if keep is not None:
        listing.rejects = [r for r in listing.rejects if keep(r.image_id)]
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
    keep: Keep | None = None,
) -> None:
    """List one image; a second one with the same id is an image-level reject (``strict``: an error).

    ``source``: the file that lists the image; ``annotation``: the one its size and boxes come from.
    An image whose id ``keep`` refuses is left out, as are its duplicates.
    """
    if keep is not None and not keep(image_id):
        return
    if image_id in seen:
        image_id = printable(image_id)  # a YOLO stem is a file name: maybe not UTF-8
        reason = f"image id {image_id!r} appears twice in split {split}; remove the second entry"
        listing.rejects.append(reject_or_raise(printable(source), reason, "image", image_id, split, strict))
        return
    seen.add(image_id)
    listing.items.append(ShardItem(f"{len(listing.items):08d}", str(image_path), load, annotation))
    listing.image_ids.append(image_id)


def _list_voc(
    root: Path,
    spec: str,
    split: str,
    names: list[str],
    strict: bool,
    listing: SplitListing,
    seen: set[str],
    keep: Keep | None,
) -> None:
    voc_root, imageset = voc_spec_root(root, spec)
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
            keep,
        )


def _ready(record: ImageRecord) -> tuple[ImageRecord, list[Reject]]:
    return record, []


def _list_coco(
    root: Path,
    spec: str,
    split: str,
    names: list[str],
    strict: bool,
    listing: SplitListing,
    seen: set[str],
    keep: Keep | None,
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
            keep,
        )


def _list_yolo(
    root: Path,
    spec: str,
    split: str,
    names: list[str],
    strict: bool,
    listing: SplitListing,
    seen: set[str],
    keep: Keep | None,
) -> None:
    if not names:
        names = yolo_class_names(root)[0]
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
        _add(listing, seen, path.stem, path, load, str(path), split, strict, str(path), keep)
    listing.rejects.extend(orphan_label_rejects(label_dir, {p.stem for p in images}, split, strict))


CLASS_ONLY_SPLIT = "train_class_only"


def list_class_only(
    root: str | Path,
    class_names: Sequence[str],
    strict: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[SplitListing, list[str]]:
    """YOLO9000's classification-only samples: an image folder ``root/<class>/<image>``
    (:mod:`yolov2.data.imagefolder`, with its named rejects) listed as the :data:`CLASS_ONLY_SPLIT` split, each
    image a record with a label and no box (:func:`~yolov2.data.records.class_only_record`).

    Returns the listing and the class names: ``class_names`` followed by the folder's classes not among them, so
    the detection labels keep their numbers and a folder class that is also a detection class shares its label.
    """
    scan = scan_image_folder(root, None, CLASS_ONLY_SPLIT, strict, max_pixels)
    names = list(class_names) + [name for name in scan.class_names if name not in class_names]
    label_of = {name: i for i, name in enumerate(names)}
    listing = SplitListing(rejects=list(scan.rejects), class_names=names)
    for sample in scan.samples:
        name = scan.class_names[sample.label]
        image_id = f"{name}/{Path(sample.path).name}"
        load = functools.partial(_class_only_item, sample.path, image_id, label_of[name], max_pixels)
        listing.items.append(ShardItem(f"{len(listing.items):08d}", sample.path, load))
        listing.image_ids.append(image_id)
    return listing, names


def _class_only_item(path: str, image_id: str, label: int, max_pixels: int) -> tuple[ImageRecord | None, list[Reject]]:
    """The record of one classification-only image, sized from its header (the scan checked the file; it may
    have changed since)."""
    try:
        info = inspect_image_file(path, max_pixels)
    except DatasetError as e:
        return None, [Reject(path, str(e).removeprefix(f"{path}: "), "image", image_id, CLASS_ONLY_SPLIT)]
    return class_only_record(image_id, CLASS_ONLY_SPLIT, path, info.width, info.height, label), []
