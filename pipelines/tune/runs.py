"""The search in MLflow: one child run per trial under the tune stage's run, created by the stage's own
process (the default SQLite store wants one process creating runs), then filled by the trial's rank 0 (its
per-epoch metrics, by run id) and closed by the stage with the trial's outcome.

Statuses: SCHEDULED when created, RUNNING once the trial starts, then FINISHED (ran all its epochs), KILLED
(stopped early by ASHA; tagged ``tune.outcome: stopped_early`` and ``tune.stopped_at_epoch``) or FAILED.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from pipelines.tracking import safe_params
from pipelines.tune.records import TrialRecord

log = logging.getLogger(__name__)
MLFLOW_STATUS = {"finished": "FINISHED", "stopped_early": "KILLED", "failed": "FAILED"}


def create_trial_runs(
    tracking_uri: str, parent_run_id: str, trials: Sequence[dict[str, Any]], fingerprint: str
) -> list[str]:
    """A SCHEDULED child run of ``parent_run_id`` per sampled trial (``{key: value}``), with its params."""
    from mlflow.entities import Param, RunStatus
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    run_ids = []
    for index, params in enumerate(trials):
        run = client.create_run(
            experiment_id,
            run_name=f"trial_{index:03d}",
            tags={
                "mlflow.parentRunId": parent_run_id,
                "stage": "tune_trial",
                "tune.fingerprint": fingerprint,
                "tune.trial_index": str(index),
            },
        )
        values = safe_params({**params, "trial_index": index})
        client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in values.items()])
        client.update_run(run.info.run_id, status=RunStatus.to_string(RunStatus.SCHEDULED))
        run_ids.append(run.info.run_id)
    return run_ids


def adopt_trial_runs(tracking_uri: str, parent_run_id: str, run_ids: Sequence[str]) -> None:
    """A restored search's trial runs move under this attempt's stage run (the killed attempt's run ended)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    for run_id in run_ids:
        client.set_tag(run_id, "mlflow.parentRunId", parent_run_id)


def finish_trial_runs(tracking_uri: str, records: Sequence[TrialRecord]) -> None:
    """Each trial's run gets its outcome: status, tags, best metric and wall time."""
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    for record in records:
        if not record.run_id:
            continue
        tags = [RunTag("tune.outcome", record.status), RunTag("tune.trial_id", record.trial_id)]
        if record.stopped_at_epoch is not None:
            tags.append(RunTag("tune.stopped_at_epoch", str(record.stopped_at_epoch)))
        if record.error:
            tags.append(RunTag("tune.error", record.error[:5000]))
        now = int(time.time() * 1000)
        metrics = [Metric("trial_wall_seconds", record.wall_seconds, now, 0)]
        if record.best_metric == record.best_metric:  # not NaN
            metrics.append(Metric("best_map50_voc07", record.best_metric, now, 0))
        client.log_batch(record.run_id, metrics=metrics, tags=tags)
        client.set_terminated(record.run_id, status=MLFLOW_STATUS[record.status])
