"""MLflow runs: one per stage, ended with the status of what happened, never held up by a dead server;
runs a killed process left RUNNING; the environment tags of the pipeline's parent run.

``mlflow`` is imported inside the functions (about 2 s; see :mod:`pipelines.tracking.server`).
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pipelines.tracking.params import mask_secrets
from pipelines.tracking.server import mlflow_requests_without_retries, server_reachable

log = logging.getLogger(__name__)


class TrackingGuard:
    """Keeps a driver's MLflow calls from holding finished work hostage to a dead tracking server.

    MLflow retries a failed request for minutes with back-off and then raises: a server that dies during
    a stage and stays down would hold the finished stage that long and then fail it, its manifest
    unwritten and its work lost to the rerun. The guard asks an http(s) server's ``/health`` before each
    call (other stores always pass, at no cost); with no answer the call is skipped and named in
    ``skipped`` (the stage records the list in its manifest) with one warning. A server that comes back
    is used again from the next call on.
    """

    def __init__(self, uri: str, run_id: str | None = None, health_timeout: float = 5.0) -> None:
        self.uri = uri
        self.run_id = run_id
        self.health_timeout = health_timeout
        self.skipped: list[str] = []
        self.failed = False  # set by a caller that handled a failure itself (no exception): the run ends FAILED

    def fail(self) -> None:
        """End the run FAILED although its block ends normally: the caller caught the error and reported it
        (``full.py``'s parent run when a stage failed)."""
        self.failed = True

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        """``fn(*args, **kwargs)`` when the server answers, else skipped and ``what`` noted; True if it ran."""
        if server_reachable(self.uri, self.health_timeout):
            fn(*args, **kwargs)
            return True
        if not self.skipped:
            log.warning(
                "MLflow server %s is not answering: MLflow logging is skipped until it answers again "
                "(first skipped: %s)",
                mask_secrets(self.uri),
                what,
            )
        self.skipped.append(what)
        return False

    def end_run(self, status: str) -> None:
        """End the active run; with the server down, without MLflow's retries (the run stays RUNNING there)."""
        import mlflow

        if self.call(f"end of run ({status})", mlflow.end_run, status):
            return
        with mlflow_requests_without_retries():
            try:
                mlflow.end_run(status)  # takes the run off this process's stack, then asks the server
            except Exception as e:  # noqa: BLE001  the server is down: just found out, already warned
                log.debug("ending the MLflow run failed as expected: %s", e)


@contextmanager
def guarded_run(run_name: str, nested: bool = False) -> Iterator[TrackingGuard]:
    """Start an MLflow run and yield its :class:`TrackingGuard`; the run ends FINISHED, FAILED (an error, or
    :meth:`TrackingGuard.fail`) or KILLED (Ctrl-C), and a dead server does not hold the ending up."""
    import mlflow

    run = mlflow.start_run(run_name=run_name, nested=nested)
    guard = TrackingGuard(mlflow.get_tracking_uri(), run.info.run_id)
    status = "FAILED"
    try:
        yield guard
        status = "FAILED" if guard.failed else "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        guard.end_run(status)


def end_stale_stage_runs(experiment: str, stage: str, fingerprint: str, output_uri: str) -> list[str]:
    """Mark as KILLED the runs of this stage output left RUNNING by a process that died, and their parents.

    Call only while holding the stage output's lock (``stage.stage_lock``): a live run of this output
    holds that lock, so a run of it still RUNNING was left by a killed driver (or a lost machine). Without
    this, a killed ``full.py`` leaves its pipeline and stage runs RUNNING forever. Returns the ids marked.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    active = mlflow.active_run()
    experiment_id = (
        active.info.experiment_id
        if active
        else getattr(mlflow.get_experiment_by_name(experiment), "experiment_id", None)
    )
    if experiment_id is None:
        return []
    client = MlflowClient()
    query = f"tags.stage = '{stage}' and tags.fingerprint = '{fingerprint}' and attributes.status = 'RUNNING'"
    stale = [
        r
        for r in client.search_runs([experiment_id], query, max_results=1000)
        if r.data.tags.get("workspace") == output_uri
    ]
    marked: list[str] = []
    for run in stale:
        parent = run.data.tags.get("mlflow.parentRunId")
        ids = [run.info.run_id]
        if (
            parent
            and (active is None or parent != active.info.run_id)
            and client.get_run(parent).info.status == "RUNNING"
        ):
            ids.append(parent)
        for run_id in ids:
            client.set_tag(run_id, "ended_by", f"a later run of {stage} found it left RUNNING by a dead process")
            client.set_terminated(run_id, "KILLED")
            marked.append(run_id)
    if marked:
        log.warning(
            "stage %s: marked %d run(s) left RUNNING by a killed earlier run as KILLED: %s",
            stage,
            len(marked),
            ", ".join(marked),
        )
    return marked


def environment_tags() -> dict[str, str]:
    """Git commit and library versions, recorded on the parent run."""
    import mlflow
    import pyarrow
    import ray  # only the parent run needs these; `import ray` alone takes seconds
    import torch

    tags = {
        "versions.torch": torch.__version__,
        "versions.ray": ray.__version__,
        "versions.mlflow": mlflow.__version__,
        "versions.pyarrow": pyarrow.__version__,
    }
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
        if commit:
            tags["git.commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    return tags
