"""Which class names a dataset's labels mean, and whether the names in use fit its annotations.

``data.class_names: auto`` takes them from the dataset itself (:func:`resolve_class_names`):

- VOC: the 20 VOC classes in ``voc.names`` order for the standard VOC downloads; any other VOC folder:
  the ``<object><name>`` texts of the ``train`` split's annotations (every split's when there is no
  ``train``), sorted. Sorted, so the order is stable and a VOC subset keeps VOC's (alphabetical) order.
- COCO: the categories of the first ``train`` annotation file, in id order.
- YOLO: ``classes.txt``, else the only ``*.names`` file, else the ``names:`` of an Ultralytics
  ``data.yaml`` / ``dataset.yaml`` (a list, or an ``{id: name}`` mapping).
- a generated dataset: the generator's names.

Why the checks: a list that does not fit the annotations does not fail by itself. Every box with
another name becomes a box-level reject, so a VOC folder read with the 20 VOC classes gave hundreds of
images with no boxes and one "rejects" count, and the next stage failed far from the cause. So when
the user's own list leaves more than :data:`UNKNOWN_SHARE_LIMIT` of the boxes out, the shard stage
stops and names the unknown classes (:func:`check_unknown_classes`), and a split whose every image
ends up with no box is an error (:func:`check_split_has_boxes`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from yolov2.data.coco import read_coco_categories
from yolov2.data.paths import RootConfinement, dataset_file_reason, read_regular_file
from yolov2.data.records import Reject
from yolov2.data.voc import VOC_CLASSES, voc_object_names, voc_spec_root, voc_split_ids
from yolov2.errors import DatasetError
from yolov2.io import read_names

UNKNOWN_SHARE_LIMIT = 0.5  # more than this share of the boxes with a class outside the user's list: stop
YOLO_YAML_FILES = ("data.yaml", "dataset.yaml")  # Ultralytics' dataset description, with its `names:`
_LISTED = 10  # unknown classes named in the error; the rest are counted
_REASONS = 3  # most common reject reasons named when a split has no box

Source = Literal["config", "generator", "voc", "annotations", "categories", "names file"]


@dataclass(frozen=True)
class ClassNames:
    """The names (label ``i`` is ``names[i]``), what gave them (``source``) and where (``origin``, for people)."""

    names: tuple[str, ...]
    source: Source
    origin: str

    def describe(self) -> str:
        """The log line: ``class names (auto, from 160 train annotations): raccoon``."""
        how = "from data.class_names" if self.source == "config" else f"auto, from {self.origin}"
        return f"class names ({how}): {_shown(self.names)}"


def resolve_class_names(
    prepared: Mapping[str, Any], configured: Sequence[str] | str, splits: Mapping[str, Sequence[str]]
) -> ClassNames:
    """The class names for the dataset of the prepare stage's manifest (format, root, and for generated data
    its ``class_names``, for downloads its ``archives``): ``configured`` when it is a list, else as the
    module docstring says for ``"auto"``. ``splits``: our split -> the dataset's split specs."""
    if not isinstance(configured, str):
        return ClassNames(tuple(configured), "config", "data.class_names")
    if configured != "auto":
        raise DatasetError(f"class names must be a list or 'auto', got {configured!r}")
    generated = prepared.get("class_names")
    if isinstance(generated, list) and generated:
        return ClassNames(tuple(generated), "generator", "the dataset generator")
    fmt, root = prepared["format"], Path(prepared["root"])
    label, specs = naming_specs(splits)
    if fmt == "voc":
        if prepared.get("archives"):
            return ClassNames(VOC_CLASSES, "voc", "the VOC downloads (voc.names)")
        counts, files = voc_name_counts(root, specs)
        if not counts:
            raise DatasetError(
                f"{root}: the {files} readable annotation file(s) of split {label} ({', '.join(specs)}) name no "
                "<object>, so the class names cannot be taken from them; set data.class_names to the dataset's names"
            )
        return ClassNames(tuple(sorted(counts)), "annotations", f"{files} {label} annotations")
    if fmt == "coco":
        annotation = root / "annotations" / f"instances_{specs[0]}.json"
        unusable = dataset_file_reason(annotation, root)
        if unusable:
            raise DatasetError(f"{annotation}: {unusable}")
        return ClassNames(read_coco_categories(annotation).names, "categories", f"the categories of {annotation.name}")
    if fmt == "yolo":
        names, path = yolo_class_names(root)
        return ClassNames(tuple(names), "names file", path.name)
    raise DatasetError(f"unknown dataset format {fmt!r} (voc, coco or yolo)")


def naming_specs(splits: Mapping[str, Sequence[str]]) -> tuple[str, list[str]]:
    """The split whose annotations name the classes, and its specs: ``train``, else every split (in order)."""
    if "train" in splits:
        return "train", list(dict.fromkeys(splits["train"]))
    return "+".join(splits), list(dict.fromkeys(spec for specs in splits.values() for spec in specs))


def voc_name_counts(
    root: str | Path, specs: Iterable[str], class_names: Sequence[str] = VOC_CLASSES
) -> tuple[Counter[str], int]:
    """How many ``<object>``s carry each name in the annotations of the VOC split specs, and how many files
    were read. Only the XMLs are read (no image, no box check); an unusable one (missing, malformed,
    outside the root) is skipped, since the reader rejects it later with its reason. ``class_names`` tells
    per-class split files (``<class>_<split>.txt``) apart, as in :func:`yolov2.data.voc.voc_split_ids`."""
    confine = RootConfinement(root)
    counts: Counter[str] = Counter()
    files = 0
    seen: set[tuple[Path, str]] = set()
    for spec in specs:
        voc_root, imageset = voc_spec_root(root, spec)
        ids, _ = voc_split_ids(voc_root, imageset, class_names)
        for image_id in ids:
            if (voc_root, image_id) in seen:
                continue
            seen.add((voc_root, image_id))
            names = voc_object_names(voc_root, image_id, confine)
            if names is not None:
                files += 1
                counts.update(names)
    return counts, files


def yolo_class_names(root: str | Path) -> tuple[list[str], Path]:
    """The class names of a YOLO folder and the file they come from: ``classes.txt``, else the only ``*.names``
    file, else an Ultralytics ``data.yaml`` / ``dataset.yaml``."""
    root = Path(root)
    if (root / "classes.txt").is_file():
        return read_names(root / "classes.txt"), root / "classes.txt"
    names_files = sorted(root.glob("*.names"))
    if len(names_files) == 1:
        return read_names(names_files[0]), names_files[0]
    for name in YOLO_YAML_FILES:
        if (root / name).is_file():
            return yaml_class_names(root / name), root / name
    found = ""
    if names_files:
        found = f" (found {len(names_files)} *.names files: {', '.join(p.name for p in names_files)})"
    raise DatasetError(
        f"{root}: no class names for this YOLO folder{found}; add classes.txt (one name per line, line i is "
        "class id i) or set data.class_names in the config"
    )


def yaml_class_names(path: str | Path) -> list[str]:
    """The ``names:`` of an Ultralytics dataset YAML: a list, or a mapping ``{0: name, 1: name, ...}``."""
    try:
        data = yaml.safe_load(read_regular_file(path).decode("utf-8-sig"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DatasetError(f"{path}: cannot read the dataset YAML ({e})") from e
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        ids = sorted(k for k in names if isinstance(k, int) and not isinstance(k, bool))
        if len(ids) != len(names) or ids != list(range(len(ids))):
            raise DatasetError(f"{path}: names: the keys must be the class ids 0..{len(names) - 1}, got {list(names)}")
        names = [names[i] for i in ids]
    if not isinstance(names, list) or not names:
        raise DatasetError(
            f"{path}: no names: list (or {{id: name}} mapping) of class names; add one or set data.class_names"
        )
    bad = [n for n in names if not isinstance(n, (str, int, float)) or isinstance(n, bool) or not str(n).strip()]
    if bad:
        raise DatasetError(f"{path}: names: {bad[0]!r} is not a class name")
    out = [str(n).strip() for n in names]
    repeated = sorted({n for n in out if out.count(n) > 1})
    if repeated:
        raise DatasetError(f"{path}: names: repeats {', '.join(repeated)}")
    return out


def check_unknown_classes(
    class_names: ClassNames, name_counts: Mapping[str, int], total_boxes: int, skip_unknown: bool
) -> None:
    """Stop when the user's own names (``source == "config"``) leave out more than :data:`UNKNOWN_SHARE_LIMIT`
    of the ``total_boxes``; ``name_counts`` counts the boxes of each name (or YOLO class id) that may be unknown.
    Nothing to check for names taken from the dataset, or with ``skip_unknown`` (those boxes stay rejects)."""
    if class_names.source != "config" or skip_unknown or total_boxes <= 0:
        return
    known = set(class_names.names)
    unknown = Counter({name: n for name, n in name_counts.items() if name not in known and n > 0})
    count = sum(unknown.values())
    if count / total_boxes <= UNKNOWN_SHARE_LIMIT:
        return
    ranked = sorted(unknown.items(), key=lambda item: (-item[1], item[0]))
    listed = ", ".join(f"{name!r} ({n})" for name, n in ranked[:_LISTED])
    more = f" and {len(ranked) - _LISTED} more" if len(ranked) > _LISTED else ""
    raise DatasetError(
        f"{count} of the {total_boxes} boxes ({count / total_boxes:.0%}) have a class that is not in "
        f"data.class_names ({_shown(class_names.names)}): {listed}{more}. Set data.class_names: auto to take the "
        "names from the annotations, add these names to data.class_names, or set data.skip_unknown_classes: true "
        "to train on the listed classes only (their boxes are then skipped as rejects)"
    )


def check_unknown_classes_early(
    prepared: Mapping[str, Any], splits: Mapping[str, Sequence[str]], class_names: ClassNames, skip_unknown: bool
) -> None:
    """:func:`check_unknown_classes` before any image is read, where that is cheap: for VOC, from an XML-only
    scan of every split's annotations. COCO and YOLO are checked on their readers' rejects instead
    (:func:`unknown_class_counts`): a COCO file is parsed once, by the reader; YOLO labels hold only ids."""
    if prepared["format"] != "voc" or class_names.source != "config" or skip_unknown:
        return
    specs = list(dict.fromkeys(spec for split_specs in splits.values() for spec in split_specs))
    counts, _ = voc_name_counts(prepared["root"], specs, class_names.names)
    check_unknown_classes(class_names, counts, sum(counts.values()), skip_unknown)


def unknown_class_counts(rejects: Iterable[Reject]) -> Counter[str]:
    """How many boxes were rejected for each class outside the class names (:attr:`Reject.unknown_class`)."""
    return Counter(r.unknown_class for r in rejects if r.level == "box" and r.unknown_class is not None)


def check_split_has_boxes(
    split: str, images: int, boxes: int, box_rejects: Sequence[Reject], class_names: ClassNames
) -> None:
    """A split with images but not one box cannot be trained or scored on: raise, with the likeliest cause."""
    if images == 0 or boxes > 0:
        return
    if not box_rejects:
        raise DatasetError(
            f"split {split}: none of its {images} images has a box, and no box was rejected: its annotations hold "
            "no objects. Check that they are the labelled files (VOC: Annotations/<id>.xml with <object>s; COCO: "
            "the JSON's annotations; YOLO: labels/<split>/<stem>.txt)"
        )
    reasons = Counter(
        f"unknown class {r.unknown_class!r}" if r.unknown_class is not None else r.reason for r in box_rejects
    )
    common = "; ".join(f"{reason} ({n})" for reason, n in reasons.most_common(_REASONS))
    raise DatasetError(
        f"split {split}: none of its {images} images has a box left; {len(box_rejects)} boxes were rejected, "
        f"most often: {common}. The class names are the likely cause ({class_names.describe()}): set "
        "data.class_names: auto to take them from the annotations, or list the dataset's own names in "
        "data.class_names. Every reject is in the stage's rejects.parquet"
    )


def _shown(names: Sequence[str], limit: int = 30) -> str:
    """Names for a message: all of them, or the first ``limit`` and the count."""
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")
