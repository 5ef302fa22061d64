"""The detection table every metric reads: one row per detection, flat NumPy columns.

Columns (the Parquet schema the evaluate stage writes, :data:`DETECTION_SCHEMA`):

* ``image_id`` (string): the record's ``image_id`` the detection belongs to;
* ``label`` (int32): contiguous class index into the dataset's class names;
* ``score`` (float64): confidence, higher is better;
* ``x1, y1, x2, y2`` (float64): the box, **absolute pixels, 0-based continuous, xyxy**, the same
  convention as the records (a reader converts a file's own convention once, at the boundary).

Row order matters: metrics sort by score with a *stable* sort, so among equal scores the earlier row
ranks first (the VOC devkit's MATLAB ``sort`` and pycocotools' ``mergesort`` do the same).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from yolov2.data.records import ImageRecord
from yolov2.errors import DatasetError

DETECTION_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("x1", pa.float64(), nullable=False),
        pa.field("y1", pa.float64(), nullable=False),
        pa.field("x2", pa.float64(), nullable=False),
        pa.field("y2", pa.float64(), nullable=False),
    ]
)

_MAX_NAMED = 5  # how many offending ids an error message lists


@dataclass(frozen=True)
class DetectionTable:
    """Detections of a whole dataset as columns.

    image_id (str[N]), label (int64[N]), score (float64[N]), boxes (float64[N, 4]) xyxy in absolute
    pixels, 0-based continuous.
    """

    image_id: np.ndarray
    label: np.ndarray
    score: np.ndarray
    boxes: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.image_id)
        columns = (("label", self.label, (n,)), ("score", self.score, (n,)), ("boxes", self.boxes, (n, 4)))
        for name, arr, shape in columns:
            if arr.shape != shape:
                raise DatasetError(f"detections: column {name} has shape {arr.shape}, expected {shape}")

    @classmethod
    def from_arrays(
        cls,
        image_id: Sequence[str] | np.ndarray,
        label: Sequence[int] | np.ndarray,
        score: Sequence[float] | np.ndarray,
        boxes: Sequence[Sequence[float]] | np.ndarray,
    ) -> DetectionTable:
        """Build from any array-likes; boxes (float[N, 4]) xyxy absolute pixels, 0-based continuous."""
        ids = np.asarray(image_id, dtype=object).reshape(-1)
        ids = np.array([str(i) for i in ids], dtype=object)
        return cls(
            image_id=ids,
            label=np.asarray(label, np.int64).reshape(-1),
            score=np.asarray(score, np.float64).reshape(-1),
            boxes=np.asarray(boxes, np.float64).reshape(-1, 4),
        )

    @classmethod
    def empty(cls) -> DetectionTable:
        return cls.from_arrays([], [], [], np.zeros((0, 4)))

    @classmethod
    def from_arrow(cls, table: pa.Table) -> DetectionTable:
        """From a table with the columns of :data:`DETECTION_SCHEMA` (extra columns are ignored)."""
        missing = [f.name for f in DETECTION_SCHEMA if f.name not in table.column_names]
        if missing:
            raise DatasetError(
                f"detections table lacks columns {missing} (needs {DETECTION_SCHEMA.names}, has {table.column_names})"
            )
        col = {name: table.column(name).to_numpy(zero_copy_only=False) for name in DETECTION_SCHEMA.names}
        boxes = np.stack([col["x1"], col["y1"], col["x2"], col["y2"]], axis=1) if len(table) else np.zeros((0, 4))
        return cls.from_arrays(col["image_id"], col["label"], col["score"], boxes)

    def to_arrow(self) -> pa.Table:
        """As an Arrow table with :data:`DETECTION_SCHEMA`, rows in the same order."""
        return pa.table(
            {
                "image_id": pa.array(self.image_id.tolist(), pa.string()),
                "label": pa.array(self.label, pa.int32()),
                "score": pa.array(self.score, pa.float64()),
                "x1": pa.array(self.boxes[:, 0], pa.float64()),
                "y1": pa.array(self.boxes[:, 1], pa.float64()),
                "x2": pa.array(self.boxes[:, 2], pa.float64()),
                "y2": pa.array(self.boxes[:, 3], pa.float64()),
            },
            schema=DETECTION_SCHEMA,
        )

    def __len__(self) -> int:
        return len(self.image_id)

    def take(self, index: np.ndarray) -> DetectionTable:
        """The rows ``index`` (int or bool array), in that order."""
        return DetectionTable(self.image_id[index], self.label[index], self.score[index], self.boxes[index])

    @classmethod
    def concat(cls, tables: Sequence[DetectionTable]) -> DetectionTable:
        if not tables:
            return cls.empty()
        return cls(
            np.concatenate([t.image_id for t in tables]),
            np.concatenate([t.label for t in tables]),
            np.concatenate([t.score for t in tables]),
            np.concatenate([t.boxes for t in tables]).reshape(-1, 4),
        )


@dataclass(frozen=True)
class GroundTruthArrays:
    """Every ground-truth box of a record list, flattened (records order, then box order).

    image (int64[G]): index of the box's record; label (int64[G]); boxes (float64[G, 4]) xyxy absolute
    pixels 0-based continuous; difficult, iscrowd (bool[G]).
    """

    image: np.ndarray
    label: np.ndarray
    boxes: np.ndarray
    difficult: np.ndarray
    iscrowd: np.ndarray

    @classmethod
    def from_records(cls, records: Sequence[ImageRecord]) -> GroundTruthArrays:
        counts = np.array([r.num_boxes for r in records], np.int64)
        if counts.sum() == 0:
            empty = np.zeros(0, np.int64)
            return cls(empty, empty.copy(), np.zeros((0, 4)), np.zeros(0, bool), np.zeros(0, bool))
        return cls(
            image=np.repeat(np.arange(len(records), dtype=np.int64), counts),
            label=np.concatenate([r.labels for r in records]).astype(np.int64),
            boxes=np.concatenate([r.boxes for r in records]).astype(np.float64).reshape(-1, 4),
            difficult=np.concatenate([r.difficult for r in records]).astype(bool),
            iscrowd=np.concatenate([r.iscrowd for r in records]).astype(bool),
        )


def image_index(records: Sequence[ImageRecord]) -> dict[str, int]:
    """``image_id -> position`` in ``records``; a duplicated id is a :class:`DatasetError`."""
    index: dict[str, int] = {}
    for i, r in enumerate(records):
        if r.image_id in index:
            raise DatasetError(
                f"records: image_id {r.image_id!r} appears twice (positions {index[r.image_id]} and {i})"
            )
        index[r.image_id] = i
    return index


def resolve_detections(detections: DetectionTable, records: Sequence[ImageRecord], num_classes: int) -> np.ndarray:
    """Check the detections against the dataset and return each one's record index (int64[N]).

    Raises :class:`DatasetError` naming the offending values for: an image id that is not in
    ``records``, a label outside ``0..num_classes-1``, a non-finite score or box coordinate, or an
    inverted box (``x2 < x1`` or ``y2 < y1``; zero width or height is allowed).
    """
    index = image_index(records)
    if len(detections) == 0:
        return np.zeros(0, np.int64)
    unique_ids, inverse = np.unique(detections.image_id.astype(str), return_inverse=True)
    unknown = [u for u in unique_ids.tolist() if u not in index]
    if unknown:
        raise DatasetError(
            f"detections: {len(unknown)} image id(s) not in the ground truth, e.g. {unknown[:_MAX_NAMED]} "
            f"(the ground truth has {len(records)} images)"
        )
    bad_label = (detections.label < 0) | (detections.label >= num_classes)
    if bad_label.any():
        labels = sorted(set(detections.label[bad_label].tolist()))
        raise DatasetError(
            f"detections: unknown class label(s) {labels[:_MAX_NAMED]} (classes are 0..{num_classes - 1}), "
            f"e.g. on image {detections.image_id[bad_label][0]!r}"
        )
    finite = np.isfinite(detections.score) & np.isfinite(detections.boxes).all(axis=1)
    if not finite.all():
        raise DatasetError(
            f"detections: {int((~finite).sum())} row(s) with a non-finite score or box, "
            f"e.g. on image {detections.image_id[~finite][0]!r}"
        )
    b = detections.boxes
    inverted = (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
    if inverted.any():
        raise DatasetError(
            f"detections: {int(inverted.sum())} box(es) with x2 < x1 or y2 < y1 (boxes must be xyxy), "
            f"e.g. {b[inverted][0].tolist()} on image {detections.image_id[inverted][0]!r}"
        )
    positions = np.array([index[u] for u in unique_ids.tolist()], np.int64)
    return positions[inverse.reshape(-1)]
