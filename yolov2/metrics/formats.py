"""Ground truth and detections from files, for evaluating any detector's output (``yolov2 eval-dets``).

Ground truth (:func:`read_ground_truth`):

* a VOC root (a folder with ``Annotations/``; images in ``JPEGImages/`` without an XML count as
  images with no objects) or a plain folder of VOC XML files;
* a COCO instances JSON (image files are not needed);
* a folder of text files, one per image (``<image_id>.txt``, an empty file is an image with no
  objects), one box per line: ``<class> <left> <top> <width> <height>`` (``box_format="xywh"``) or
  ``<class> <left> <top> <right> <bottom>`` (``"xyxy"``), optionally followed by the word
  ``difficult``.

Detections (:func:`read_detections`):

* a folder of text files ``<image_id>.txt``, one detection per line: ``<class> <score> <box>`` with
  the same box format;
* a COCO results JSON: ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]`` (needs a
  COCO ground truth, whose category ids it refers to).

Classes: names map through the ground truth's class list: the COCO categories in id order, or the
sorted union of the names found in the ground truth files (or ``class_names`` when given). A
detection of any other class is a :class:`DatasetError`, as is one on an image without ground truth.

Coordinates. Records are 0-based continuous; each file convention is converted once, here:

* VOC XML: 1-based inclusive pixel indices -> ``(xmin - 1, ymin - 1, xmax, ymax)`` (as ``yolov2.data.voc``);
* COCO ``[x, y, w, h]``: continuous -> ``(x, y, x + w, y + h)``;
* text files: ``xywh`` first becomes ``(left, top, left + width, top + height)``; then with
  ``coords="voc"`` (default) the numbers are VOC-style inclusive pixel indices (subtract 1 from
  left/top, so a box's pixel width is ``right - left + 1``, which is how the VOC devkit and
  Padilla's Object-Detection-Metrics measure them), and with ``coords="continuous"`` they are used
  as they are.

Everything here is strict: a malformed line, XML or JSON entry stops with an error naming the file
(and line), because silently dropping a box changes the metric.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeGuard

import numpy as np

from yolov2.data.coco import CocoCategories, load_coco_json
from yolov2.data.records import ImageRecord
from yolov2.data.voc import parse_voc_xml
from yolov2.errors import ConfigError, DatasetError
from yolov2.metrics.coco import CocoDetections, CocoGroundTruth
from yolov2.metrics.detections import DetectionTable

BoxFormat = Literal["xywh", "xyxy"]
Coords = Literal["voc", "continuous"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class GroundTruth:
    """Records, their class names, and the COCO category id of each label (None unless from COCO JSON).

    Records hold float32 boxes and no COCO ``area``; for a COCO file, ``coco`` keeps the file's own
    values so that COCO metrics equal a pycocotools run on the file itself.
    """

    records: list[ImageRecord]
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...] | None = None
    kind: str = "text"
    coco: CocoGroundTruth | None = None  # a COCO file's own values (float64 boxes, its areas), for exact COCO numbers


def read_ground_truth(
    path: str | Path,
    box_format: BoxFormat = "xywh",
    coords: Coords = "voc",
    class_names: Sequence[str] | None = None,
) -> GroundTruth:
    """Read ground truth in any supported layout (module docstring); records sorted by image id
    (COCO: file order)."""
    path = Path(path)
    _check_options(box_format, coords)
    if path.is_file() and path.suffix.lower() == ".json":
        return read_coco_ground_truth(path, class_names)
    if not path.is_dir():
        raise DatasetError(f"{path}: ground truth not found (expected a COCO .json file or a folder)")
    if (path / "Annotations").is_dir():
        return read_voc_ground_truth(path / "Annotations", class_names, image_dir=path / "JPEGImages")
    if any(path.glob("*.xml")):
        return read_voc_ground_truth(path, class_names)
    if any(path.glob("*.txt")):
        return read_text_ground_truth(path, box_format, coords, class_names)
    raise DatasetError(f"{path}: no Annotations/ folder, *.xml or *.txt files: not a ground-truth folder")


def read_voc_ground_truth(
    xml_dir: Path, class_names: Sequence[str] | None = None, image_dir: Path | None = None
) -> GroundTruth:
    """Every ``*.xml`` of ``xml_dir``; images of ``image_dir`` without an XML are added with no boxes."""
    parsed = []
    for xml in sorted(xml_dir.glob("*.xml")):
        ann = parse_voc_xml(xml)
        for i, obj in enumerate(ann.objects):
            if obj.problem:
                raise DatasetError(f"{xml}: object {i} ({obj.name or 'no name'}): {obj.problem}")
        parsed.append((xml.stem, ann))
    names = _class_list(class_names, (o.name for _, a in parsed for o in a.objects), xml_dir)
    label_of = {n: i for i, n in enumerate(names)}
    records = []
    for stem, ann in parsed:
        unknown = [o.name for o in ann.objects if o.name not in label_of]
        if unknown:
            raise DatasetError(
                f"{xml_dir / (stem + '.xml')}: class {unknown[0]!r} is not among the class names {list(names)}"
            )
        raw = np.array([o.bndbox for o in ann.objects], np.float64).reshape(-1, 4)
        records.append(
            ImageRecord(
                image_id=stem,
                split="eval",
                path=str(xml_dir / (stem + ".xml")),
                width=ann.width or 0,
                height=ann.height or 0,
                boxes=raw + np.array([-1.0, -1.0, 0.0, 0.0]),  # VOC 1-based inclusive -> 0-based continuous
                labels=[label_of[o.name] for o in ann.objects],
                difficult=[o.difficult for o in ann.objects],
                iscrowd=[o.iscrowd for o in ann.objects],
            )
        )
    if image_dir is not None and image_dir.is_dir():
        have = {r.image_id for r in records}
        for img in sorted(image_dir.iterdir()):
            if img.suffix.lower() in IMAGE_SUFFIXES and img.stem not in have:
                records.append(ImageRecord(img.stem, "eval", str(img), 0, 0))
                have.add(img.stem)
        records.sort(key=lambda r: r.image_id)
    if not records:
        raise DatasetError(f"{xml_dir}: no *.xml files")
    return GroundTruth(records, tuple(names), None, "voc")


def read_coco_ground_truth(path: Path, class_names: Sequence[str] | None = None) -> GroundTruth:
    """A COCO instances JSON -> records in the file's image order, ``image_id = str(id)``.

    Labels follow the categories in id order (or ``class_names`` by name); boxes are kept as given
    (not clipped), ``iscrowd`` and the non-standard ``difficult`` flag are kept. ``GroundTruth.coco``
    holds the file's own boxes and areas (an annotation without ``area`` gets ``w * h``).
    """
    source = str(path)
    data = load_coco_json(path)
    cats = CocoCategories.from_json_categories(data["categories"], source)
    if class_names is not None:
        missing = [n for n in cats.names if n not in class_names]
        if missing:
            raise DatasetError(f"{source}: categories {missing[:5]} are not among the class names")
        names = tuple(class_names)
        label_of_name = {n: i for i, n in enumerate(names)}
        category_ids = tuple(dict(zip(cats.names, cats.ids)).get(n, -1) for n in names)
        label_of_cat = {cid: label_of_name[n] for cid, n in zip(cats.ids, cats.names)}
    else:
        names, category_ids = cats.names, cats.ids
        label_of_cat = cats.label_of_id
    images: dict[int, dict] = {}
    for i, img in enumerate(data["images"]):
        iid = img.get("id") if isinstance(img, dict) else None
        if not isinstance(iid, int) or isinstance(iid, bool):
            raise DatasetError(f"{source}: images[{i}]: id {iid!r} is not an integer")
        if iid in images:
            raise DatasetError(f"{source}: images[{i}]: duplicate image id {iid}")
        images[iid] = img
    per_image: dict[int, list[tuple[list[float], int, bool, bool]]] = {iid: [] for iid in images}
    raw: list[tuple[int, int, list[float], float, bool]] = []  # the file's values, for exact COCO numbers
    for j, ann in enumerate(data["annotations"]):
        where = f"{source}: annotations[{j}]"
        if not isinstance(ann, dict):
            raise DatasetError(f"{where} is not an object")
        iid, cid, bbox = ann.get("image_id"), ann.get("category_id"), ann.get("bbox")
        if iid not in per_image:
            raise DatasetError(f"{where}: image_id {iid!r} is not in 'images'")
        if cid not in label_of_cat:
            raise DatasetError(f"{where}: unknown category id {cid!r}")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_finite_number(v) for v in bbox)):
            raise DatasetError(f"{where}: bbox {bbox!r} is not 4 finite numbers [x, y, w, h]")
        if bbox[2] < 0 or bbox[3] < 0:
            raise DatasetError(f"{where}: bbox {bbox!r} has a negative width or height")
        area = ann.get("area")
        area = float(area) if _is_finite_number(area) else float(bbox[2]) * float(bbox[3])
        per_image[iid].append((bbox, label_of_cat[cid], bool(ann.get("difficult", 0)), bool(ann.get("iscrowd", 0))))
        raw.append((iid, cid, bbox, area, bool(ann.get("iscrowd", 0))))
    records = []
    for iid, img in images.items():
        anns = per_image[iid]
        xywh = np.array([a[0] for a in anns], np.float64).reshape(-1, 4)
        records.append(
            ImageRecord(
                image_id=str(iid),
                split="eval",
                path=str(img.get("file_name", "")),
                width=int(img.get("width", 0) or 0),
                height=int(img.get("height", 0) or 0),
                boxes=np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
                labels=[a[1] for a in anns],
                difficult=[a[2] for a in anns],
                iscrowd=[a[3] for a in anns],
            )
        )
    coco = CocoGroundTruth(
        image_ids=np.array(list(images), np.int64),
        widths=np.array([int(img.get("width", 0) or 0) for img in images.values()], np.int64),
        heights=np.array([int(img.get("height", 0) or 0) for img in images.values()], np.int64),
        ann_id=np.arange(1, len(raw) + 1, dtype=np.int64),
        image=np.array([r[0] for r in raw], np.int64),
        category=np.array([r[1] for r in raw], np.int64),
        bbox=np.array([r[2] for r in raw], np.float64).reshape(-1, 4),
        area=np.array([r[3] for r in raw], np.float64),
        iscrowd=np.array([r[4] for r in raw], bool),
    )
    return GroundTruth(records, tuple(names), tuple(category_ids), "coco", coco)


def read_text_ground_truth(
    folder: Path, box_format: BoxFormat = "xywh", coords: Coords = "voc", class_names: Sequence[str] | None = None
) -> GroundTruth:
    """A folder of ``<image_id>.txt`` files: ``<class> <box...> [difficult]`` per line."""
    parsed = []
    for txt in sorted(folder.glob("*.txt")):
        rows = []
        for line_no, tokens in _lines(txt):
            difficult = len(tokens) == 6 and tokens[5].lower() == "difficult"
            if len(tokens) != 5 and not difficult:
                raise DatasetError(
                    f"{txt}:{line_no}: expected '<class> <4 box numbers> [difficult]', got {len(tokens)} fields"
                )
            rows.append((tokens[0], _numbers(tokens[1:5], txt, line_no), difficult))
        parsed.append((txt.stem, rows))
    names = _class_list(class_names, (r[0] for _, rows in parsed for r in rows), folder)
    label_of = {n: i for i, n in enumerate(names)}
    records = []
    for stem, rows in parsed:
        for name, _, _ in rows:
            if name not in label_of:
                raise DatasetError(
                    f"{folder / (stem + '.txt')}: class {name!r} is not among the class names {list(names)}"
                )
        boxes = text_boxes_to_records(np.array([r[1] for r in rows], np.float64).reshape(-1, 4), box_format, coords)
        records.append(
            ImageRecord(
                image_id=stem,
                split="eval",
                path=str(folder / (stem + ".txt")),
                width=0,
                height=0,
                boxes=boxes,
                labels=[label_of[r[0]] for r in rows],
                difficult=[r[2] for r in rows],
                iscrowd=np.zeros(len(rows), bool),
            )
        )
    return GroundTruth(records, tuple(names), None, "text")


def read_detections(
    path: str | Path, ground_truth: GroundTruth, box_format: BoxFormat = "xywh", coords: Coords = "voc"
) -> DetectionTable:
    """Detections from a folder of text files or a COCO results JSON (module docstring)."""
    path = Path(path)
    _check_options(box_format, coords)
    if path.is_file() and path.suffix.lower() == ".json":
        return read_coco_results(path, ground_truth)
    if path.is_dir():
        return read_text_detections(path, ground_truth.class_names, box_format, coords)
    raise DatasetError(f"{path}: detections not found (expected a COCO results .json file or a folder of .txt files)")


def read_text_detections(
    folder: Path, class_names: Sequence[str], box_format: BoxFormat = "xywh", coords: Coords = "voc"
) -> DetectionTable:
    """``<image_id>.txt`` files with ``<class> <score> <box...>`` lines, in file then line order."""
    label_of = {n: i for i, n in enumerate(class_names)}
    ids, labels, scores, boxes = [], [], [], []
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise DatasetError(f"{folder}: no *.txt detection files")
    for txt in files:
        for line_no, tokens in _lines(txt):
            if len(tokens) != 6:
                raise DatasetError(
                    f"{txt}:{line_no}: expected '<class> <score> <4 box numbers>', got {len(tokens)} fields"
                )
            if tokens[0] not in label_of:
                raise DatasetError(
                    f"{txt}:{line_no}: unknown class {tokens[0]!r} (the ground truth's classes are {list(class_names)})"
                )
            values = _numbers(tokens[1:], txt, line_no)
            ids.append(txt.stem)
            labels.append(label_of[tokens[0]])
            scores.append(values[0])
            boxes.append(values[1:])
    xyxy = text_boxes_to_records(np.array(boxes, np.float64).reshape(-1, 4), box_format, coords)
    return DetectionTable.from_arrays(ids, labels, scores, xyxy)


def read_coco_results(path: Path, ground_truth: GroundTruth) -> DetectionTable:
    """A COCO results JSON; ``category_id`` maps through the COCO ground truth's categories."""
    ids, cats, scores, xywh = _parse_coco_results(path, ground_truth)
    label_of_cat = {cid: i for i, cid in enumerate(ground_truth.category_ids or ()) if cid >= 0}
    labels = [label_of_cat[c] for c in cats]
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
    return DetectionTable.from_arrays([str(i) for i in ids], labels, scores, xyxy)


def read_coco_results_arrays(path: Path, ground_truth: GroundTruth) -> CocoDetections:
    """A COCO results JSON as COCO columns, values exactly as in the file (for exact pycocotools numbers)."""
    ids, cats, scores, xywh = _parse_coco_results(path, ground_truth)
    return CocoDetections(
        image=np.array(ids, np.int64), category=np.array(cats, np.int64), bbox=xywh, score=np.array(scores, np.float64)
    )


def _parse_coco_results(path: Path, ground_truth: GroundTruth) -> tuple[list[int], list[int], list[float], np.ndarray]:
    if ground_truth.category_ids is None:
        raise DatasetError(
            f"{path}: COCO results refer to category ids, which only a COCO JSON ground truth defines "
            f"(this ground truth is {ground_truth.kind}); use text detections with class names instead"
        )
    known_cats = {cid for cid in ground_truth.category_ids if cid >= 0}
    known_images = {r.image_id for r in ground_truth.records}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    if not isinstance(data, list):
        raise DatasetError(f"{path}: a COCO results file is a list of detections, got {type(data).__name__}")
    ids, cats, scores, boxes = [], [], [], []
    for j, det in enumerate(data):
        where = f"{path}: [{j}]"
        if not isinstance(det, dict):
            raise DatasetError(f"{where} is not an object")
        iid, cid, bbox, score = det.get("image_id"), det.get("category_id"), det.get("bbox"), det.get("score")
        if not isinstance(iid, int) or isinstance(iid, bool) or str(iid) not in known_images:
            raise DatasetError(f"{where}: image_id {iid!r} is not an image of the ground truth")
        if cid not in known_cats:
            raise DatasetError(f"{where}: unknown category id {cid!r}")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_finite_number(v) for v in bbox)):
            raise DatasetError(f"{where}: bbox {bbox!r} is not 4 finite numbers [x, y, w, h]")
        if not _is_finite_number(score):
            raise DatasetError(f"{where}: score {score!r} is not a finite number")
        ids.append(iid)
        cats.append(cid)
        scores.append(float(score))
        boxes.append(bbox)
    return ids, cats, scores, np.array(boxes, np.float64).reshape(-1, 4)


def text_boxes_to_records(boxes: np.ndarray, box_format: BoxFormat, coords: Coords) -> np.ndarray:
    """Text-file boxes (float[N, 4], ``box_format``, ``coords``) -> records' 0-based continuous xyxy."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    if box_format == "xywh":
        b[:, 2:] += b[:, :2]
    if coords == "voc":
        b[:, :2] -= 1.0
    return b


def _class_list(class_names: Sequence[str] | None, found, where: Path) -> tuple[str, ...]:
    if class_names is not None:
        names = tuple(class_names)
        if len(set(names)) != len(names):
            raise DatasetError(f"class names contain duplicates: {list(names)}")
        return names
    names = tuple(sorted(set(found)))
    if not names:
        raise DatasetError(f"{where}: the ground truth has no boxes, so no class names (pass the class names)")
    return names


def _lines(path: Path):
    """(line number, tokens) of the non-empty lines of a text file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text ({e})") from e
    for n, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if tokens:
            yield n, tokens


def _numbers(tokens: Sequence[str], path: Path, line_no: int) -> list[float]:
    try:
        values = [float(t) for t in tokens]
    except ValueError as e:
        raise DatasetError(f"{path}:{line_no}: not a number ({e})") from e
    if not all(math.isfinite(v) for v in values):
        raise DatasetError(f"{path}:{line_no}: non-finite number in {list(tokens)}")
    return values


def _is_finite_number(v: object) -> TypeGuard[int | float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_options(box_format: str, coords: str) -> None:
    if box_format not in ("xywh", "xyxy"):
        raise ConfigError(f"box format must be 'xywh' or 'xyxy', got {box_format!r}")
    if coords not in ("voc", "continuous"):
        raise ConfigError(f"coords must be 'voc' or 'continuous', got {coords!r}")
