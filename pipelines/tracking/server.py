"""Which MLflow store to use, whether it answers, and MLflow's HTTP settings for a server that may be dead.

Default store: SQLite inside the workspace (``sqlite:///<workspace>/mlflow.db``) with artifacts in
``<workspace>/mlartifacts``: it works with nothing running, and ``mlflow ui --backend-store-uri ...``
shows the runs. MLflow 3's plain file store is in maintenance mode, so we do not use it.

``mlflow`` is imported inside the functions: it takes about 2 s to import, and every Ray worker that runs a
stage's task imports the stage module (and so this package) whether or not it logs anything.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from pipelines.tracking.params import mask_secrets
from pipelines.workspace import Workspace
from yolov2.errors import ConfigError

log = logging.getLogger(__name__)


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


def server_reachable(uri: str, timeout: float = 5.0) -> bool:
    """For an http(s) tracking URI: does the MLflow server answer ``/health``? (Other stores: True.)"""
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def fail_fast_mlflow_env(timeout_s: int) -> dict[str, str]:
    """MLflow's HTTP settings for requests that fail at once (no retries, ``timeout_s`` per request) instead
    of backing off for minutes against a dead server."""
    return {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}


@contextmanager
def mlflow_requests_without_retries() -> Iterator[None]:
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


def setup_mlflow(
    configured_uri: str | None, experiment: str, workspace: Workspace, fallback_to_local: bool = False
) -> str:
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
