"""COCO instances JSON: read into records (through ``pycocotools.coco.COCO``) and write back.

Coordinates: a COCO ``bbox`` is ``[x, y, w, h]`` in absolute pixels, 0-based continuous, so records
get ``x1, y1, x2, y2 = x, y, x + w, y + h`` with no offset; the writer applies the exact inverse.

Labels: category ids (COCO's are 1..90 with gaps) map to contiguous labels ``0..C-1`` in id order;
:class:`CocoCategories` keeps the mapping so :func:`write_coco` restores the original ids. When
``class_names`` is given, categories map by name instead (how a val split reuses the train labels).

Why the JSON is checked before pycocotools sees it: ``COCO.createIndex`` builds plain dicts keyed by
id, so a duplicate image or annotation id silently overwrites the earlier one, an annotation for a
missing image raises a bare ``KeyError`` deep inside, and string ids pass unnoticed. Here a broken
file (not JSON, missing ``images``/``annotations``/``categories``, bad categories) is a
:class:`DatasetError`; a broken entry is a :class:`Reject` (or an error with ``strict=True``):

* image entries with a bad or string id, file name (also: not valid UTF-8 text, which is how JSON
  carries a file-name byte that is not UTF-8) or size; every entry of a duplicated image id
  (its annotations cannot be attributed) -> image-level rejects;
* annotations with a bad field, a duplicated id (the later ones), an unknown category, or an image
  id that is not in ``images`` -> box-level rejects.

Given ``confine_to`` (the shard stage passes the dataset root), the JSON file resolving outside that
folder through a symlink is a :class:`DatasetError`, an image file doing so an image-level reject.

``iscrowd`` is kept; images without annotations are kept (with no boxes). Two non-standard keys are
written and read so VOC -> COCO -> records is lossless: ``"difficult": 1`` on difficult boxes and
``"yolov2_image_id"`` on images whose record id is not a COCO integer id; other tools ignore them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeGuard

import numpy as np

from yolov2.data.images import DEFAULT_MAX_PIXELS, check_image_against_record, inspect_image_file
from yolov2.data.paths import dataset_file_reason, not_utf8_reason, printable, read_regular_file
from yolov2.data.records import ImageRecord, Reject, reject_message, sanitize_boxes
from yolov2.errors import DatasetError
from yolov2.io import atomic_write_text

if TYPE_CHECKING:
    from pycocotools.coco import COCO

RECORD_ID_KEY = "yolov2_image_id"


class ProblemFn(Protocol):
    """Called for every bad entry: where, why, its level, its image id (or None) and, for a box dropped only
    because its category is not among the class names, that category's name; raises when strict."""

    def __call__(
        self,
        where: str,
        reason: str,
        level: Literal["image", "box"],
        image_id: Any = None,
        unknown_class: str | None = None,
    ) -> None: ...


@dataclass(frozen=True)
class CocoCategories:
    """Label ``i`` is the category with id ``ids[i]`` and name ``names[i]``."""

    ids: tuple[int, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.names):
            raise DatasetError(f"CocoCategories: {len(self.ids)} ids but {len(self.names)} names")
        if len(set(self.ids)) != len(self.ids):
            raise DatasetError(f"CocoCategories: duplicate category ids in {list(self.ids)}")

    @property
    def label_of_id(self) -> dict[int, int]:
        return {cid: i for i, cid in enumerate(self.ids)}

    @classmethod
    def from_json_categories(cls, categories: list, source: str) -> CocoCategories:
        """From the ``categories`` list of a COCO file, sorted by id; checks ids and names."""
        if not isinstance(categories, list):
            raise DatasetError(f"{source}: 'categories' must be a list, got {type(categories).__name__}")
        seen_ids: dict[int, int] = {}
        seen_names: dict[str, int] = {}
        pairs = []
        for i, cat in enumerate(categories):
            where = f"{source}: categories[{i}]"
            if not isinstance(cat, dict):
                raise DatasetError(f"{where} is not an object")
            cid, name = cat.get("id"), cat.get("name")
            if not _is_int(cid):
                raise DatasetError(f"{where}: id {cid!r} is not an integer")
            if not isinstance(name, str) or not name:
                raise DatasetError(f"{where}: name {name!r} is not a non-empty string")
            if cid in seen_ids:
                raise DatasetError(f"{where}: category id {cid} already used by categories[{seen_ids[cid]}]")
            if name in seen_names:
                raise DatasetError(f"{where}: category name {name!r} already used by categories[{seen_names[name]}]")
            seen_ids[cid], seen_names[name] = i, i
            pairs.append((cid, name))
        pairs.sort()
        return cls(tuple(c for c, _ in pairs), tuple(n for _, n in pairs))


def load_coco_json(annotation_json: str | Path) -> dict:
    """The raw JSON of a COCO file, with the top-level keys checked; :class:`DatasetError` otherwise."""
    source = str(annotation_json)
    try:
        data = json.loads(read_regular_file(annotation_json).decode("utf-8"))
    except FileNotFoundError as e:
        raise DatasetError(f"{source}: annotation file is missing") from e
    except json.JSONDecodeError as e:
        raise DatasetError(f"{source}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    except UnicodeDecodeError as e:
        raise DatasetError(f"{source}: not UTF-8 text ({e})") from e
    except OSError as e:
        raise DatasetError(f"{source}: cannot read annotation file ({e.strerror})") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{source}: the top level must be an object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DatasetError(
                f"{source}: missing key {key!r} (a COCO instances file has images, annotations, categories)"
            )
        if not isinstance(data[key], list):
            raise DatasetError(f"{source}: {key!r} must be a list, got {type(data[key]).__name__}")
    return data


def read_coco_categories(annotation_json: str | Path) -> CocoCategories:
    """The category mapping of a COCO file (labels in id order)."""
    data = load_coco_json(annotation_json)
    return CocoCategories.from_json_categories(data["categories"], str(annotation_json))


def read_coco(
    annotation_json: str | Path,
    image_dir: str | Path,
    split: str,
    check_images: bool = True,
    strict: bool = False,
    class_names: Sequence[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    confine_to: str | Path | None = None,
) -> tuple[list[ImageRecord], list[Reject]]:
    """Read a COCO instances file: ``(records, rejects)``, records in the file's image order.

    ``record.image_id`` is the COCO image id as a decimal string (or the ``yolov2_image_id`` the
    writer stored); ``record.path`` is ``image_dir / file_name``. Labels follow the file's
    categories in id order, or ``class_names`` by name when given. ``check_images`` reads every
    image header (format, size, truncation); a missing image file, or one that is not a regular
    file, is rejected either way, and an image without ``width``/``height`` has its header read
    anyway, for its size (``record.size_from_image``).
    ``confine_to``: a folder the JSON and every image file must resolve inside (symlinks followed).
    Images in (entries of ``images``) = ``len(records)`` + image-level rejects.
    """
    source = str(annotation_json)
    unusable = dataset_file_reason(annotation_json, confine_to)
    if unusable:
        raise DatasetError(f"{source}: {unusable}")
    data = load_coco_json(annotation_json)
    categories = CocoCategories.from_json_categories(data["categories"], source)
    if class_names is None:
        label_of_cat = categories.label_of_id
    else:
        index = {n: i for i, n in enumerate(class_names)}
        label_of_cat = {cid: index[n] for cid, n in zip(categories.ids, categories.names) if n in index}
    cat_name = dict(zip(categories.ids, categories.names))
    image_dir = Path(os.path.abspath(image_dir))

    rejects: list[Reject] = []

    def problem(
        where: str,
        reason: str,
        level: Literal["image", "box"],
        image_id: Any = None,
        unknown_class: str | None = None,
    ) -> None:
        if strict:
            raise DatasetError(reject_message(where, reason))
        iid = None if image_id is None else printable(str(image_id))  # a JSON string may hold lone surrogates
        rejects.append(Reject(where, reason, level, iid, split, unknown_class))

    images = _valid_images(data["images"], source, problem)
    anns = _valid_annotations(data["annotations"], data["images"], images, cat_name, label_of_cat, source, problem)

    from pycocotools.coco import COCO  # here: shard tasks import this module but never build a COCO index

    coco = COCO()
    coco.dataset = {"images": list(images.values()), "annotations": anns, "categories": data["categories"]}
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress lines
        coco.createIndex()

    records: list[ImageRecord] = []
    for coco_id, img in images.items():
        record = _image_record(
            coco, coco_id, img, image_dir, split, label_of_cat, check_images, max_pixels, source, problem, confine_to
        )
        if record is not None:
            records.append(record)
    return records, rejects


def write_coco(
    records: Sequence[ImageRecord],
    class_names: Sequence[str],
    path: str | Path,
    category_ids: Sequence[int] | None = None,
    image_dir: str | Path | None = None,
) -> dict[str, int]:
    """Write records as a COCO instances JSON (atomically); returns ``{record image_id: COCO image id}``.

    ``category_ids[i]`` is the id written for label ``i`` (default ``i + 1``; pass
    ``CocoCategories.ids`` to restore a COCO file's ids). Image ids are the record ids when they
    are all distinct decimal integers (a COCO file read back keeps its ids), else ``1..N`` with the
    record id kept under ``yolov2_image_id``. Annotation ids start at 1 (pycocotools' evaluation
    treats id 0 as "unmatched"). ``file_name`` is ``record.path`` relative to ``image_dir``
    (default: the folder shared by every record path). Boxes: ``bbox = [x1, y1, x2 - x1, y2 - y1]``
    (exact float values), ``area = w * h``.
    """
    if category_ids is None:
        category_ids = list(range(1, len(class_names) + 1))
    cats = CocoCategories(tuple(int(c) for c in category_ids), tuple(class_names))
    if image_dir is None:
        parents = [os.path.dirname(os.path.abspath(r.path)) for r in records]
        image_dir = os.path.commonpath(parents) if parents else os.getcwd()
    image_dir = os.path.abspath(image_dir)
    ids = [r.image_id for r in records]
    keep_ids = len(set(ids)) == len(ids) and all(_is_decimal_id(i) for i in ids)
    id_map = {iid: (int(iid) if keep_ids else n + 1) for n, iid in enumerate(ids)}
    if len(id_map) != len(ids):
        raise DatasetError(f"{path}: records have duplicate image ids; COCO image ids must be unique")

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for record in records:
        rel = os.path.relpath(os.path.abspath(record.path), image_dir)
        if rel.startswith(".."):
            raise DatasetError(
                f"{record.path}: image is not under image_dir {image_dir}; cannot write a relative file_name"
            )
        image = {
            "id": id_map[record.image_id],
            "file_name": PurePosixPath(Path(rel)).as_posix(),
            "width": int(record.width),
            "height": int(record.height),
        }
        if not keep_ids:
            image[RECORD_ID_KEY] = record.image_id
        images.append(image)
        for box, label, difficult, crowd in zip(record.boxes, record.labels, record.difficult, record.iscrowd):
            if not 0 <= int(label) < len(cats.ids):
                raise DatasetError(f"record {record.image_id}: label {int(label)} is outside 0..{len(cats.ids) - 1}")
            x1, y1, x2, y2 = (float(v) for v in box)
            w, h = x2 - x1, y2 - y1
            ann = {
                "id": len(annotations) + 1,
                "image_id": id_map[record.image_id],
                "category_id": cats.ids[int(label)],
                "bbox": [x1, y1, w, h],
                "area": w * h,
                "iscrowd": int(bool(crowd)),
            }
            if difficult:
                ann["difficult"] = 1
            annotations.append(ann)
    data = {
        "info": {"description": "written by yolov2-pipeline (yolov2.data.coco.write_coco)"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": n, "supercategory": ""} for c, n in zip(cats.ids, cats.names)],
    }
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, separators=(",", ":")))
    return id_map


# ---------------------------------------------------------------------------------------------


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_decimal_id(text: str) -> bool:
    return text.isascii() and text.isdigit() and str(int(text)) == text


def _valid_images(raw_images: list, source: str, problem: ProblemFn) -> dict[int, dict]:
    """The usable entries of ``images`` by id, in file order; the others become rejects."""
    positions: dict[int, list[int]] = {}
    for i, img in enumerate(raw_images):
        if isinstance(img, dict) and _is_int(img.get("id")):
            positions.setdefault(img["id"], []).append(i)
    images: dict[int, dict] = {}
    for i, img in enumerate(raw_images):
        where = f"{source}: images[{i}]"
        if not isinstance(img, dict):
            problem(where, f"image entry is a {type(img).__name__}, not an object", "image", None)
            continue
        iid = img.get("id")
        if isinstance(iid, str):
            problem(where, f"image id {iid!r} is a string; COCO image ids are integers", "image", iid)
            continue
        if not _is_int(iid):
            problem(where, f"image id {iid!r} is missing or not an integer", "image", iid)
            continue
        if len(positions[iid]) > 1:
            others = ", ".join(f"images[{p}]" for p in positions[iid])
            problem(where, f"duplicate image id {iid} (entries {others}); its annotations are ambiguous", "image", iid)
            continue
        name = img.get("file_name")
        if not isinstance(name, str) or not _is_safe_relative(name):
            problem(where, f"file_name {name!r} is not a relative path inside the image folder", "image", iid)
            continue
        bad_text = not_utf8_reason("file_name", name) or not_utf8_reason(RECORD_ID_KEY, img.get(RECORD_ID_KEY) or "")
        if bad_text:
            problem(where, bad_text, "image", iid)
            continue
        bad_size = [k for k in ("width", "height") if k in img and not (_is_int(img[k]) and img[k] > 0)]
        if bad_size:
            problem(where, f"{bad_size[0]} {img[bad_size[0]]!r} is not a positive integer", "image", iid)
            continue
        images[iid] = img
    return images


def _valid_annotations(
    raw_anns: list,
    raw_images: list,
    images: dict[int, dict],
    cat_name: dict[int, str],
    label_of_cat: dict[int, int],
    source: str,
    problem: ProblemFn,
) -> list[dict]:
    """The usable annotations of usable images, in file order; the others become box rejects."""
    listed = {img.get("id") for img in raw_images if isinstance(img, dict) and _is_int(img.get("id"))}
    first_use: dict[int, int] = {}
    kept = []
    for j, ann in enumerate(raw_anns):
        where = f"{source}: annotations[{j}]"
        if not isinstance(ann, dict):
            problem(where, f"annotation is a {type(ann).__name__}, not an object", "box", None)
            continue
        aid, iid, cid = ann.get("id"), ann.get("image_id"), ann.get("category_id")
        if not _is_int(aid):
            problem(where, f"annotation id {aid!r} is missing or not an integer", "box", iid)
            continue
        if aid in first_use:
            problem(where, f"duplicate annotation id {aid} (first used by annotations[{first_use[aid]}])", "box", iid)
            continue
        first_use[aid] = j
        if not _is_int(iid):
            problem(where, f"annotation {aid}: image_id {iid!r} is not an integer", "box", iid)
            continue
        if iid not in listed:
            problem(where, f"annotation {aid} is for a missing image: image_id {iid} is not in 'images'", "box", iid)
            continue
        if iid not in images:
            continue  # its image entry was rejected as a whole; the image-level reject covers it
        if not _is_int(cid) or cid not in cat_name:
            problem(where, f"annotation {aid}: unknown category id {cid!r}", "box", iid)
            continue
        if cid not in label_of_cat:
            problem(
                where,
                f"annotation {aid}: category {cat_name[cid]!r} (id {cid}) is not among the class names",
                "box",
                iid,
                printable(cat_name[cid]),  # a JSON string may hold lone surrogates
            )
            continue
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            problem(where, f"annotation {aid}: bbox {bbox!r} is not a list of 4 numbers [x, y, w, h]", "box", iid)
            continue
        bad_flag = [k for k in ("iscrowd", "difficult") if ann.get(k, 0) not in (0, 1)]
        if bad_flag:
            problem(where, f"annotation {aid}: {bad_flag[0]} is {ann[bad_flag[0]]!r}, expected 0 or 1", "box", iid)
            continue
        kept.append(ann)
    return kept


def _image_record(
    coco: COCO,
    coco_id: int,
    img: dict,
    image_dir: Path,
    split: str,
    label_of_cat: dict[int, int],
    check_images: bool,
    max_pixels: int,
    source: str,
    problem: ProblemFn,
    confine_to: str | Path | None = None,
) -> ImageRecord | None:
    record_id = img.get(RECORD_ID_KEY)
    image_id = record_id if isinstance(record_id, str) and record_id else str(coco_id)
    path = image_dir / img["file_name"]
    where = f"{source}: image {coco_id} ({img['file_name']})"
    if not path.exists():
        problem(where, f"image file is missing: {path}", "image", image_id)
        return None
    unusable = dataset_file_reason(path, confine_to)
    if unusable:
        problem(where, unusable, "image", image_id)
        return None
    width: int | None = img.get("width")
    height: int | None = img.get("height")
    size_from_image = width is None or height is None
    info = None
    if check_images or size_from_image:  # a missing width/height comes from the image header
        try:
            info = inspect_image_file(path, max_pixels)
        except DatasetError as e:
            problem(str(path), str(e).removeprefix(f"{path}: "), "image", image_id)
            return None
    if width is None or height is None:  # i.e. size_from_image
        assert info is not None  # inspected above whenever size_from_image
        width, height = info.width, info.height
    record = ImageRecord(image_id, split, str(path), width, height, size_from_image=size_from_image)
    if info is not None:
        reason = check_image_against_record(info, record, f"image {coco_id} of {Path(source).name}")
        if reason:
            problem(where, reason, "image", image_id)
            return None

    anns = coco.imgToAnns.get(coco_id, [])
    xywh = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    clipped, was_clipped, reasons = sanitize_boxes(xyxy, width, height)
    good = reasons == ""
    for ann, reason in zip(anns, reasons):
        if reason:
            text = f"annotation {ann['id']}: {reason}: bbox [x, y, w, h] = {ann['bbox']} in a {width}x{height} image"
            problem(f"{source}: annotation {ann['id']}", text, "box", image_id)
    kept = [a for a, g in zip(anns, good) if g]
    record.boxes = clipped[good]
    record.labels = np.array([label_of_cat[a["category_id"]] for a in kept], np.int32)
    record.difficult = np.array([bool(a.get("difficult", 0)) for a in kept], bool)
    record.iscrowd = np.array([bool(a.get("iscrowd", 0)) for a in kept], bool)
    record.clipped_boxes = int(was_clipped.sum())
    return record


def _is_safe_relative(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return bool(name) and not p.is_absolute() and ".." not in p.parts and "\x00" not in name
