"""The annotation table: one record per image, the contract between readers, shards and training.

Coordinates everywhere in a record are **absolute pixels, 0-based continuous, xyxy**: a box covering
VOC's inclusive pixels ``xmin=1..xmax=10`` is ``x1=0, x2=10``. Readers convert once, at the boundary.

A reader returns ``(records, rejects)``. A :class:`Reject` at ``level="image"`` means the whole image
was skipped; at ``level="box"`` only one box was dropped (the image is still in ``records``). So for
any reader ``images_in == len(records) + count(rejects at level "image")``: nothing is lost silently.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, cast

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from yolov2.errors import DatasetError

BOX_TYPE = pa.struct(
    [
        ("x1", pa.float32()),
        ("y1", pa.float32()),
        ("x2", pa.float32()),
        ("y2", pa.float32()),
        ("label", pa.int32()),
        ("difficult", pa.bool_()),
        ("iscrowd", pa.bool_()),
    ]
)

RECORD_FIELDS = [
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("boxes", pa.list_(BOX_TYPE), nullable=False),
    pa.field("clipped_boxes", pa.int32(), nullable=False),
]

REJECT_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("level", pa.string(), nullable=False),
        pa.field("image_id", pa.string()),
        pa.field("split", pa.string()),
        pa.field("unknown_class", pa.string()),
    ]
)

CLASS_NAMES_KEY = b"class_names"


def record_schema(class_names: Sequence[str]) -> pa.Schema:
    """The records schema with the class names (label i is ``class_names[i]``) in its metadata."""
    return pa.schema(RECORD_FIELDS, metadata={CLASS_NAMES_KEY: json.dumps(list(class_names)).encode()})


@dataclass
class ImageRecord:
    """One image and its boxes.

    boxes (float32[N, 4]): x1, y1, x2, y2 in absolute pixels, 0-based continuous.
    labels (int32[N]): contiguous class indices into the dataset's class names.
    class_only: YOLO9000's classification-only sample: an image with a label and no box (its one box covers the
    image and is never trained on); stored in the shard's JSON only when set.
    """

    image_id: str
    split: str
    path: str
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int32))
    difficult: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))
    iscrowd: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))
    clipped_boxes: int = 0
    class_only: bool = False
    # The annotation gave no usable size, so width/height are the image header's. Not stored (the
    # record is the same either way): the shard stage counts these repairs in its stats.
    size_from_image: bool = field(default=False, compare=False)

    if TYPE_CHECKING:
        # The generated __init__ as the type checker should see it: the array fields take any array-like
        # (lists included), which __post_init__ converts, so once built they are always arrays. Keep in
        # step with the fields above; at run time the dataclass-generated __init__ is the one used.
        def __init__(
            self,
            image_id: str,
            split: str,
            path: str,
            width: int,
            height: int,
            boxes: npt.ArrayLike = ...,
            labels: npt.ArrayLike = ...,
            difficult: npt.ArrayLike = ...,
            iscrowd: npt.ArrayLike = ...,
            clipped_boxes: int = 0,
            class_only: bool = False,
            size_from_image: bool = False,
        ) -> None: ...

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        n = len(self.boxes)
        if self.class_only and n != 1:
            raise ValueError(f"{self.image_id}: a classification-only record has one box (its label), not {n}")
        self.labels = np.asarray(self.labels, np.int32).reshape(n)
        self.difficult = np.asarray(self.difficult, bool).reshape(n)
        self.iscrowd = np.asarray(self.iscrowd, bool).reshape(n)

    @property
    def num_boxes(self) -> int:
        return len(self.boxes)

    def to_dict(self) -> dict:
        """Plain-JSON form, the one stored next to each image in a shard (``<key>.json``)."""
        out = {
            "image_id": self.image_id,
            "split": self.split,
            "path": self.path,
            "width": int(self.width),
            "height": int(self.height),
            "boxes": _boxes_to_dicts(self),
            "clipped_boxes": int(self.clipped_boxes),
        }
        return {**out, "class_only": True} if self.class_only else out

    @classmethod
    def from_dict(cls, row: dict) -> ImageRecord:
        boxes = row.get("boxes") or []
        return cls(
            image_id=str(row["image_id"]),
            split=str(row["split"]),
            path=str(row["path"]),
            width=int(row["width"]),
            height=int(row["height"]),
            boxes=np.array([[b["x1"], b["y1"], b["x2"], b["y2"]] for b in boxes], np.float32),
            labels=np.array([b["label"] for b in boxes], np.int32),
            difficult=np.array([b["difficult"] for b in boxes], bool),
            iscrowd=np.array([b["iscrowd"] for b in boxes], bool),
            clipped_boxes=int(row.get("clipped_boxes", 0)),
            class_only=bool(row.get("class_only") or False),
        )


def relabel_records(records: Iterable[ImageRecord], new_label: Sequence[int]) -> list[ImageRecord]:
    """Copies of ``records`` with each box's label ``c`` replaced by ``new_label[c]``; boxes mapped to -1 are left
    out (scoring at a coarser level of a class tree: yolov2.wordtree.ancestors_at_depth)."""
    lookup = np.asarray(new_label, np.int64)
    out = []
    for r in records:
        labels = lookup[r.labels] if r.num_boxes else r.labels
        keep = labels >= 0
        out.append(
            dataclasses.replace(
                r, boxes=r.boxes[keep], labels=labels[keep], difficult=r.difficult[keep], iscrowd=r.iscrowd[keep]
            )
        )
    return out


def class_only_record(image_id: str, split: str, path: str, width: int, height: int, label: int) -> ImageRecord:
    """A classification-only sample: the label on a box covering the whole image."""
    return ImageRecord(
        image_id, split, path, width, height, [[0, 0, width, height]], [label], [False], [False], class_only=True
    )


@dataclass(frozen=True)
class Reject:
    """Something a reader skipped: ``source`` names the file, ``reason`` says why.

    ``unknown_class``: for a box dropped only because its class is not among the class names, that
    class's name (a YOLO label: its class id), so the shard stage can count them without reading reasons.
    """

    source: str
    reason: str
    level: Literal["image", "box"] = "image"
    image_id: str | None = None
    split: str | None = None
    unknown_class: str | None = None


def _boxes_to_dicts(record: ImageRecord) -> list[dict]:
    # .tolist() turns the whole array into Python numbers at once (float32 values widen exactly).
    return [
        {"x1": b[0], "y1": b[1], "x2": b[2], "y2": b[3], "label": lab, "difficult": d, "iscrowd": c}
        for b, lab, d, c in zip(
            record.boxes.tolist(), record.labels.tolist(), record.difficult.tolist(), record.iscrowd.tolist()
        )
    ]


def records_to_table(records: Iterable[ImageRecord], class_names: Sequence[str]) -> pa.Table:
    """Records -> Arrow table with :func:`record_schema`, built column-wise (no per-box Python objects)."""
    records = list(records)
    counts = np.array([r.num_boxes for r in records], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)

    def cat(parts: list[np.ndarray], dtype, shape: tuple[int, ...]) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(shape, dtype)

    boxes = cat([r.boxes for r in records], np.float32, (0, 4))
    struct = pa.StructArray.from_arrays(
        [
            pa.array(boxes[:, 0]),
            pa.array(boxes[:, 1]),
            pa.array(boxes[:, 2]),
            pa.array(boxes[:, 3]),
            pa.array(cat([r.labels for r in records], np.int32, (0,))),
            pa.array(cat([r.difficult for r in records], bool, (0,))),
            pa.array(cat([r.iscrowd for r in records], bool, (0,))),
        ],
        fields=list(BOX_TYPE),
    )
    columns = [
        pa.array([r.image_id for r in records], pa.string()),
        pa.array([r.split for r in records], pa.string()),
        pa.array([r.path for r in records], pa.string()),
        pa.array([int(r.width) for r in records], pa.int32()),
        pa.array([int(r.height) for r in records], pa.int32()),
        pa.ListArray.from_arrays(pa.array(offsets), struct, type=pa.list_(BOX_TYPE)),
        pa.array([int(r.clipped_boxes) for r in records], pa.int32()),
    ]
    return pa.Table.from_arrays(columns, schema=record_schema(class_names))


def table_to_records(table: pa.Table) -> list[ImageRecord]:
    """Arrow table (extra columns such as ``shard``/``key`` are ignored) -> records."""
    return [ImageRecord.from_dict(row) for row in table.to_pylist()]


def class_names_of(table_or_schema: pa.Table | pa.Schema) -> list[str]:
    """The class names stored in a records table's metadata."""
    schema = table_or_schema.schema if isinstance(table_or_schema, pa.Table) else table_or_schema
    meta = schema.metadata or {}
    if CLASS_NAMES_KEY not in meta:
        raise DatasetError("records table has no class_names metadata (was it written by records_to_table?)")
    return json.loads(meta[CLASS_NAMES_KEY])


def reject_or_raise(
    source: str,
    reason: str,
    level: Literal["image", "box"],
    image_id: str | None,
    split: str | None,
    strict: bool,
    unknown_class: str | None = None,
) -> Reject:
    """A reader's answer to a problem: a :class:`Reject`, or with ``strict`` a :class:`DatasetError` naming the file."""
    if strict:
        raise DatasetError(reject_message(source, reason))
    return Reject(source, reason, level, image_id, split, unknown_class)


def reject_message(source: str, reason: str) -> str:
    """``source: reason``, the text of a reject raised as an error; just ``reason`` when it already starts
    with the file's name (a reason such as "<path> points outside the dataset root" names it itself)."""
    return reason if reason.startswith(f"{source} ") else f"{source}: {reason}"


def rejects_to_table(rejects: Iterable[Reject]) -> pa.Table:
    rows = [
        {
            "source": r.source,
            "reason": r.reason,
            "level": r.level,
            "image_id": r.image_id,
            "split": r.split,
            "unknown_class": r.unknown_class,
        }
        for r in rejects
    ]
    return pa.Table.from_pylist(rows, schema=REJECT_SCHEMA)


def validate_record(record: ImageRecord, num_classes: int) -> list[str]:
    """Problems with one record (an empty list when it is valid); used by readers and tests."""
    problems = []
    if record.width <= 0 or record.height <= 0:
        problems.append(f"image size {record.width}x{record.height} is not positive")
    if not record.image_id:
        problems.append("empty image_id")
    b = record.boxes
    if len(b):
        if not np.isfinite(b).all():
            problems.append("a box has a non-finite coordinate")
        if ((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).any():
            problems.append("a box has zero or negative area")
        if (b[:, :2] < 0).any() or (b[:, 2] > record.width).any() or (b[:, 3] > record.height).any():
            problems.append("a box lies outside the image")
        if ((record.labels < 0) | (record.labels >= num_classes)).any():
            problems.append(f"a label is outside 0..{num_classes - 1}")
    return problems


def sanitize_boxes(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip boxes (float[N, 4], absolute xyxy) to the image and find the unusable ones.

    Returns ``(clipped_boxes, was_clipped[N], reason_per_box[N])`` where the reason is an empty
    string for a usable box, else why it must be dropped (non-finite, inverted, zero area after
    clipping, or entirely outside the image). Readers turn the reasons into box-level rejects.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    reasons = np.full(len(boxes), "", dtype=object)
    finite = cast(np.ndarray, np.isfinite(boxes).all(axis=1))  # axis=1 of a 2-D array: always an array
    reasons[~finite] = "non-finite coordinate"
    safe = np.where(finite[:, None], boxes, 0.0)
    inverted = finite & ((safe[:, 2] < safe[:, 0]) | (safe[:, 3] < safe[:, 1]))
    reasons[inverted] = "inverted box (x2 < x1 or y2 < y1)"
    clipped = safe.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    was_clipped = finite & ~inverted & (np.abs(clipped - safe) > 1e-6).any(axis=1)
    empty = finite & ~inverted & ((clipped[:, 2] - clipped[:, 0] <= 0) | (clipped[:, 3] - clipped[:, 1] <= 0))
    outside = empty & was_clipped & ((safe[:, 2] - safe[:, 0] > 0) & (safe[:, 3] - safe[:, 1] > 0))
    reasons[empty & ~outside] = "zero-area box"
    reasons[outside] = "box entirely outside the image"
    return clipped.astype(np.float32), was_clipped & (reasons == ""), reasons


def sanitize_box(
    box: tuple[float, float, float, float], width: int, height: int
) -> tuple[tuple[float, float, float, float], bool, str]:
    """:func:`sanitize_boxes` for one box (x1, y1, x2, y2: absolute xyxy), in plain Python.

    Why: a reader of one small file (VOC: a few boxes) spends more on NumPy's per-call overhead
    than on the arithmetic. Same float64 arithmetic and the same answers as :func:`sanitize_boxes`
    (``(clipped_box, was_clipped, reason)``; the clipped box only matters when the reason is empty).
    """
    x1, y1, x2, y2 = box
    if not (math.isfinite(x1) and math.isfinite(y1) and math.isfinite(x2) and math.isfinite(y2)):
        return (0.0, 0.0, 0.0, 0.0), False, "non-finite coordinate"
    if x2 < x1 or y2 < y1:
        return box, False, "inverted box (x2 < x1 or y2 < y1)"
    w, h = float(width), float(height)
    clipped = (min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h))
    was_clipped = any(abs(c - b) > 1e-6 for c, b in zip(clipped, box))
    if clipped[2] - clipped[0] <= 0 or clipped[3] - clipped[1] <= 0:
        if was_clipped and x2 - x1 > 0 and y2 - y1 > 0:
            return clipped, False, "box entirely outside the image"
        return clipped, False, "zero-area box"
    return clipped, was_clipped, ""
