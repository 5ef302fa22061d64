"""MLflow set-up and logging helpers shared by the stages (the library never imports mlflow).

Default store: SQLite inside the workspace (``sqlite:///<workspace>/mlflow.db``) with artifacts in
``<workspace>/mlartifacts``: it works with nothing running, and ``mlflow ui --backend-store-uri ...``
shows the runs. MLflow 3's plain file store is in maintenance mode, so we do not use it.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from yolov2.errors import ConfigError

from pipelines.workspace import Workspace

log = logging.getLogger(__name__)

# Parameter names or values that look like credentials are never sent to MLflow.
_SECRET_NAME = re.compile(r"(secret|token|password|passwd|api[_-]?key|access[_-]?key|credential)", re.I)
# The password part of a URL's user info (scheme://user:password@host), e.g. a database tracking URI.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*):[^/@\s]+@")
_MAX_PARAM_CHARS = 6000


def tracking_uri_for(configured: str | None, workspace: Workspace) -> str:
    """The tracking URI: the configured one, else SQLite in the (local) workspace."""
    if configured:
        return configured
    if not workspace.is_local:
        raise ValueError(
            f"workspace {workspace.uri} is remote: set mlflow.tracking_uri to an MLflow server "
            "(see cluster/mlflow_server.sh)"
        )
    return f"sqlite:///{workspace.local_path('mlflow.db')}"


def mask_secrets(text: str) -> str:
    """``scheme://user:password@host`` -> ``scheme://user:***@host`` (for printing URIs)."""
    return _URL_PASSWORD.sub(r"\g<head>:***@", text)


def server_reachable(uri: str, timeout: float = 5.0) -> bool:
    """For an http(s) tracking URI: does the MLflow server answer ``/health``? (Other stores: True.)"""
    if not uri.startswith(("http://", "https://")):
        return True
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


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

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        """``fn(*args, **kwargs)`` when the server answers, else skipped and ``what`` noted; True if it ran."""
        if server_reachable(self.uri, self.health_timeout):
            fn(*args, **kwargs)
            return True
        if not self.skipped:
            log.warning("MLflow server %s is not answering: MLflow logging is skipped until it answers again "
                        "(first skipped: %s)", mask_secrets(self.uri), what)
        self.skipped.append(what)
        return False

    def end_run(self, status: str) -> None:
        """End the active run; with the server down, without MLflow's retries (the run stays RUNNING there)."""
        import mlflow

        if self.call(f"end of run ({status})", mlflow.end_run, status):
            return
        with _mlflow_requests_without_retries():
            try:
                mlflow.end_run(status)  # takes the run off this process's stack, then asks the server
            except Exception as e:  # noqa: BLE001  the server is down: just found out, already warned
                log.debug("ending the MLflow run failed as expected: %s", e)


@contextmanager
def guarded_run(run_name: str, nested: bool = False) -> Iterator[TrackingGuard]:
    """Start an MLflow run and yield its :class:`TrackingGuard`; the run ends FINISHED, FAILED (an error) or
    KILLED (Ctrl-C), and a dead server does not hold the ending up."""
    import mlflow

    run = mlflow.start_run(run_name=run_name, nested=nested)
    guard = TrackingGuard(mlflow.get_tracking_uri(), run.info.run_id)
    status = "FAILED"
    try:
        yield guard
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        guard.end_run(status)


def fail_fast_mlflow_env(timeout_s: int) -> dict[str, str]:
    """MLflow's HTTP settings for requests that fail at once (no retries, ``timeout_s`` per request) instead
    of backing off for minutes against a dead server."""
    return {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}


@contextmanager
def _mlflow_requests_without_retries() -> Iterator[None]:
    """MLflow requests made inside fail at once (no retries, 5 s timeout) instead of backing off for minutes."""
    wanted = fail_fast_mlflow_env(5)
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def setup_mlflow(configured_uri: str | None, experiment: str, workspace: Workspace,
                 fallback_to_local: bool = False) -> str:
    """Point mlflow at the store and select (or create) the experiment; returns the tracking URI.

    An unreachable MLflow server is found out here, before any work starts: a clear error, or with
    ``fallback_to_local`` a warning and the local SQLite store in the workspace instead.
    """
    import mlflow

    # Alembic and mlflow's store start-up are chatty at INFO on every process.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = tracking_uri_for(configured_uri, workspace)
    if not server_reachable(uri):
        if not fallback_to_local:
            raise ConfigError(
                f"MLflow server {mask_secrets(uri)} is unreachable (no answer on /health). Start it "
                "(cluster/mlflow_server.sh), fix mlflow.tracking_uri, or set mlflow.fallback_to_local: true"
            )
        uri = tracking_uri_for(None, workspace)
        log.warning("MLflow server unreachable: logging to the local store %s instead", uri)
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        artifact_location = None
        if uri.startswith("sqlite:"):
            artifact_location = workspace.local_path("mlartifacts").as_uri()
        mlflow.create_experiment(experiment, artifact_location=artifact_location)
    mlflow.set_experiment(experiment)
    return uri


def safe_params(params: dict[str, Any]) -> dict[str, str]:
    """Stringify params for MLflow: secret-looking names dropped, URL passwords masked, long values capped."""
    out = {}
    for key, value in params.items():
        if _SECRET_NAME.search(key):
            continue
        text = mask_secrets(str(value))
        out[key] = text if len(text) <= _MAX_PARAM_CHARS else text[: _MAX_PARAM_CHARS - 3] + "..."
    return out


def log_params(params: dict[str, Any]) -> None:
    import mlflow

    items = list(safe_params(params).items())
    for start in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
        mlflow.log_params(dict(items[start : start + 100]))


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    import mlflow

    clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if clean:
        mlflow.log_metrics(clean, step=step)


def log_artifact_bytes(data: bytes, name: str, artifact_path: str | None = None) -> None:
    """Log in-memory bytes as an artifact file called ``name``."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_figure(figure: Any, name: str) -> None:
    import mlflow

    mlflow.log_figure(figure, name)


def end_stale_stage_runs(experiment: str, stage: str, fingerprint: str, output_uri: str) -> list[str]:
    """Mark as KILLED the runs of this stage output left RUNNING by a process that died, and their parents.

    Call only while holding the stage output's lock (``stage.stage_lock``): a live run of this output
    holds that lock, so a run of it still RUNNING was left by a killed driver (or a lost machine). Without
    this, a killed ``full.py`` leaves its pipeline and stage runs RUNNING forever. Returns the ids marked.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    active = mlflow.active_run()
    experiment_id = active.info.experiment_id if active else getattr(mlflow.get_experiment_by_name(experiment),
                                                                      "experiment_id", None)
    if experiment_id is None:
        return []
    client = MlflowClient()
    query = f"tags.stage = '{stage}' and tags.fingerprint = '{fingerprint}' and attributes.status = 'RUNNING'"
    stale = [r for r in client.search_runs([experiment_id], query, max_results=1000)
             if r.data.tags.get("workspace") == output_uri]
    marked: list[str] = []
    for run in stale:
        parent = run.data.tags.get("mlflow.parentRunId")
        ids = [run.info.run_id]
        if parent and (active is None or parent != active.info.run_id) \
                and client.get_run(parent).info.status == "RUNNING":
            ids.append(parent)
        for run_id in ids:
            client.set_tag(run_id, "ended_by", f"a later run of {stage} found it left RUNNING by a dead process")
            client.set_terminated(run_id, "KILLED")
            marked.append(run_id)
    if marked:
        log.warning("stage %s: marked %d run(s) left RUNNING by a killed earlier run as KILLED: %s",
                    stage, len(marked), ", ".join(marked))
    return marked


def environment_tags() -> dict[str, str]:
    """Git commit and library versions, recorded on the parent run."""
    import subprocess

    import mlflow
    import pyarrow
    import ray
    import torch

    tags = {
        "versions.torch": torch.__version__,
        "versions.ray": ray.__version__,
        "versions.mlflow": mlflow.__version__,
        "versions.pyarrow": pyarrow.__version__,
    }
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
        if commit:
            tags["git.commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    return tags
