"""The per-epoch results table (as Ultralytics' ``results.csv``): one row per finished epoch.

Why a table of its own: MLflow holds the same numbers as separate time series keyed by step; a run's history
as one small file (``results.parquet`` and ``results.csv`` in the train stage's output) is what a person
opens to compare runs or plot curves. The training loop builds a row at the end of each epoch
(:func:`epoch_result`) and keeps the rows in its checkpoint, so a resumed run keeps those of earlier epochs.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

__all__ = [
    "VAL_METRICS",
    "EpochResult",
    "epoch_result",
    "results_table",
    "results_csv",
    "results_to_state",
    "results_from_state",
]

# Column -> the validation metric it holds (yolov2.evaluation.validation_metrics' names). best.pt is chosen by
# the first, VOC07 mAP@0.5 on the val split.
VAL_METRICS = {
    "val_map50_voc07": "map50_voc07",
    "val_map50_voc12": "map50_voc12",
    "val_coco_ap": "coco_AP",
    "val_coco_ap50": "coco_AP50",
}


@dataclass(frozen=True)
class EpochResult:
    """One epoch as the training loop saw it; the field names are the table's columns, in order."""

    epoch: int  # epochs done, 1-based
    step: int  # optimizer steps done at the epoch's end
    loss_total: float  # the region loss and its parts: mean over this rank's micro-batches of the epoch
    loss_coord: float
    loss_obj: float
    loss_noobj: float
    loss_prior: float
    loss_cls: float
    lr: float  # of the epoch's last optimizer step
    val_map50_voc07: float | None  # None (empty in the CSV): no validation at this epoch
    val_map50_voc12: float | None
    val_coco_ap: float | None  # COCO AP at IoU 0.5:0.95
    val_coco_ap50: float | None
    images_per_s: float  # training images over all ranks / the epoch's training wall time (validation excluded)
    epoch_seconds: float  # the epoch's wall time, validation included
    wall_seconds: float  # the sum of epoch_seconds so far: over resumes, without the restarts' own time


COLUMNS = tuple(f.name for f in dataclasses.fields(EpochResult))
_INT_COLUMNS = ("epoch", "step")
SCHEMA = pa.schema(
    [
        pa.field(name, pa.int64() if name in _INT_COLUMNS else pa.float64(), nullable=name in VAL_METRICS)
        for name in COLUMNS
    ]
)


def epoch_result(
    *,
    epoch: int,
    step: int,
    losses: Mapping[str, float],
    lr: float,
    metrics: Mapping[str, float],
    images: int,
    train_seconds: float,
    epoch_seconds: float,
    previous: EpochResult | None,
) -> EpochResult:
    """The row of one epoch. ``losses``: mean loss parts by name (``total``, ``coord``, ...); ``metrics``: the
    epoch's validation metrics (empty when it did not validate); ``previous``: the row before, whose
    ``wall_seconds`` this one adds to."""

    def val(column: str) -> float | None:
        value = metrics.get(VAL_METRICS[column])
        return None if value is None else float(value)

    return EpochResult(
        epoch=epoch,
        step=step,
        loss_total=float(losses["total"]),
        loss_coord=float(losses["coord"]),
        loss_obj=float(losses["obj"]),
        loss_noobj=float(losses["noobj"]),
        loss_prior=float(losses["prior"]),
        loss_cls=float(losses["cls"]),
        lr=float(lr),
        val_map50_voc07=val("val_map50_voc07"),
        val_map50_voc12=val("val_map50_voc12"),
        val_coco_ap=val("val_coco_ap"),
        val_coco_ap50=val("val_coco_ap50"),
        images_per_s=images / max(train_seconds, 1e-9),
        epoch_seconds=epoch_seconds,
        wall_seconds=(previous.wall_seconds if previous else 0.0) + epoch_seconds,
    )


def results_table(rows: Sequence[EpochResult]) -> pa.Table:
    """The rows as an Arrow table (:data:`SCHEMA`: epoch and step int64, the rest float64, null: not validated)."""
    return pa.Table.from_pylist([dataclasses.asdict(r) for r in rows], schema=SCHEMA)


def results_csv(rows: Sequence[EpochResult]) -> str:
    """The rows as CSV: a header of :data:`COLUMNS`, floats written so they read back exactly, empty: None."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(_cell(getattr(row, name)) for name in COLUMNS)
    return buffer.getvalue()


def _cell(value: int | float | None) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return repr(value)  # Python's shortest repr reads back as the same float


def results_to_state(rows: Sequence[EpochResult]) -> list[dict[str, Any]]:
    """The rows as plain dicts, for a ``weights_only`` checkpoint."""
    return [dataclasses.asdict(r) for r in rows]


def results_from_state(state: Sequence[Mapping[str, Any]]) -> list[EpochResult]:
    """The rows back from :func:`results_to_state`."""
    return [EpochResult(**row) for row in state]
