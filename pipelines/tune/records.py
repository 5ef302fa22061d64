"""The tune stage's per-trial outcome (:class:`TrialRecord`) and its table (``trials.parquet``).

Pure data: no Ray, no MLflow, so the table and the pick of the best trial are testable without a cluster.
The table keeps one typed ``param.<key>`` column per searched value next to the JSON ``config``, so a
notebook can filter and plot on the params without parsing JSON, and the JSON keeps the exact values.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa


@dataclass(frozen=True)
class TrialRecord:
    """One trial of the search, as the tune stage reports it."""

    trial_id: str  # Ray Tune's trial id
    index: int  # the trial's position in the sampled list (0..N-1)
    params: dict[str, Any]  # the sampled values, dotted keys -> value (float, int, str or list)
    metric_by_epoch: list[float]  # val VOC07 mAP@0.5 after each epoch run, epoch 1 first (NaN: no validation)
    wall_seconds: float
    node: str  # the node (IP or id) the trial's rank-0 worker ran on; "" if unknown
    status: str  # "finished" (ran max_t epochs), "stopped_early" (ASHA), "failed"
    error: str | None = None
    run_id: str | None = None  # its MLflow child run
    workers: int = 0  # the training workers of its train run (DDP inside the trial); 0 if it never reported

    @property
    def epochs_run(self) -> int:
        """Epochs the trial completed, validated or not."""
        return len(self.metric_by_epoch)

    @property
    def best_metric(self) -> float:
        """The best validation over its epochs (what the search ranks trials by); NaN if it never validated."""
        values = [v for v in self.metric_by_epoch if not math.isnan(v)]
        return max(values) if values else math.nan

    @property
    def stopped_at_epoch(self) -> int | None:
        """The epoch ASHA stopped it after; None unless it was stopped early."""
        return self.epochs_run if self.status == "stopped_early" else None


def best_record(records: Sequence[TrialRecord]) -> TrialRecord | None:
    """The non-failed trial with the highest best metric; ties go to the lowest index (the earliest sampled) so
    the pick is deterministic. None when no such trial reported a metric. A failed trial never wins: its config
    did not train to the end."""
    candidates = [r for r in records if r.status != "failed" and not math.isnan(r.best_metric)]
    return min(candidates, key=lambda r: (-r.best_metric, r.index)) if candidates else None


def trials_table(records: Sequence[TrialRecord]) -> pa.Table:
    """One row per trial, sorted by index: outcome, best metric, per-epoch curve (NaN as null), the config as
    JSON and one typed ``param.<key>`` column per param over the union of all trials' params (null where a
    trial lacks it)."""
    rows = sorted(records, key=lambda r: r.index)
    columns: dict[str, pa.Array] = {
        "trial_id": pa.array([r.trial_id for r in rows], pa.string()),
        "trial_index": pa.array([r.index for r in rows], pa.int64()),
        "status": pa.array([r.status for r in rows], pa.string()),
        "epochs_run": pa.array([r.epochs_run for r in rows], pa.int64()),
        "best_metric": pa.array([_float_or_none(r.best_metric) for r in rows], pa.float64()),
        "stopped_at_epoch": pa.array([r.stopped_at_epoch for r in rows], pa.int64()),
        "wall_seconds": pa.array([float(r.wall_seconds) for r in rows], pa.float64()),
        "node": pa.array([r.node for r in rows], pa.string()),
        "workers": pa.array([r.workers for r in rows], pa.int64()),
        "error": pa.array([r.error for r in rows], pa.string()),
        "mlflow_run_id": pa.array([r.run_id for r in rows], pa.string()),
        "config": pa.array([_json(r.params, sort_keys=True) for r in rows], pa.string()),
        "metric_by_epoch": pa.array(
            [[_float_or_none(v) for v in r.metric_by_epoch] for r in rows], pa.list_(pa.float64())
        ),
    }
    for key in sorted({key for r in rows for key in r.params}):
        columns[f"param.{key}"] = _param_column([r.params.get(key) for r in rows])
    return pa.table(columns)


def _param_column(values: list[Any]) -> pa.Array:
    """int64 when every present value is an integer, float64 when all are numbers, else strings (str as is,
    anything else JSON-encoded), so a column never mixes types."""
    present = [v for v in values if v is not None]
    numeric = bool(present) and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in present)
    if numeric and all(isinstance(v, numbers.Integral) for v in present):
        return pa.array([None if v is None else int(v) for v in values], pa.int64())
    if numeric:
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    return pa.array([None if v is None else v if isinstance(v, str) else _json(v) for v in values], pa.string())


def _float_or_none(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _json(value: Any, sort_keys: bool = False) -> str:
    """JSON that also takes numpy scalars and arrays (a search space may sample them)."""
    return json.dumps(value, sort_keys=sort_keys, default=_plain)


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
