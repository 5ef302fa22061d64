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
from typing import TYPE_CHECKING

from pipelines.tracking.params import mask_secrets
from pipelines.workspace import Workspace
from yolov2.errors import ConfigError

if TYPE_CHECKING:
    import mlflow.entities

log = logging.getLogger(__name__)

# MLflow 3 opens an experiment in its GenAI view (traces, an assistant panel) unless told it holds model training.
# The experiment tag is what MLflow's own "experiment kind" selector writes; the UI of MLflow 3.17 decides by
# its "workflow type" instead (a sidebar switch, kept in the browser; GenAI unless set), which a link sets with
# ?workflowType=machine_learning: :func:`experiment_ui_url`.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
UI_WORKFLOW_QUERY = "workflowType=machine_learning"
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store (the command the summary prints)


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
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
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
    mark_model_training(mlflow.set_experiment(experiment))
    return uri


def mark_model_training(experiment: mlflow.entities.Experiment) -> None:
    """Tag the experiment as model training (:data:`EXPERIMENT_KIND_TAG`) unless it already has a kind: one
    chosen in the UI is kept."""
    import mlflow

    if EXPERIMENT_KIND_TAG not in experiment.tags:
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)


def experiment_ui_url(tracking_uri: str, experiment_id: str) -> str:
    """The experiment's page in the MLflow UI, in its model-training view: on the tracking server, or for a local
    store where ``mlflow ui`` serves it (:data:`LOCAL_UI`)."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else LOCAL_UI
    return f"{mask_secrets(base)}/#/experiments/{experiment_id}?{UI_WORKFLOW_QUERY}"
