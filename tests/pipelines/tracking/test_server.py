"""MLflow set-up: an unreachable server is a clear error before work starts, or a local fallback."""

from __future__ import annotations

import socket

import pytest

from pipelines import tracking
from pipelines.workspace import Workspace
from yolov2.errors import ConfigError


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the with-block ends: nothing listens there


@pytest.mark.fault
def test_unreachable_server_is_a_clear_error(tmp_path):
    uri = f"http://user:hunter2@127.0.0.1:{_closed_port()}"
    with pytest.raises(ConfigError, match="unreachable") as info:
        tracking.setup_mlflow(uri, "x", Workspace.open(tmp_path))
    assert "hunter2" not in str(info.value)  # the password is masked in the message


@pytest.mark.fault
def test_unreachable_server_falls_back_to_the_local_store(tmp_path):
    uri = tracking.setup_mlflow(
        f"http://127.0.0.1:{_closed_port()}", "x", Workspace.open(tmp_path), fallback_to_local=True
    )
    assert uri == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_the_experiment_is_marked_as_model_training_when_created_or_first_used(tmp_path):
    import mlflow

    ws = Workspace.open(tmp_path)
    tracking.setup_mlflow(None, "made-here", ws)
    made = mlflow.get_experiment_by_name("made-here")
    assert made.tags[tracking.EXPERIMENT_KIND_TAG] == tracking.MODEL_TRAINING_KIND == "custom_model_development"

    older = mlflow.create_experiment("made-before")  # e.g. by an earlier version of the pipeline
    tracking.setup_mlflow(None, "made-before", ws)
    assert mlflow.get_experiment(older).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"

    chosen = mlflow.create_experiment("chosen", tags={tracking.EXPERIMENT_KIND_TAG: "genai_development"})
    tracking.setup_mlflow(None, "chosen", ws)
    assert mlflow.get_experiment(chosen).tags[tracking.EXPERIMENT_KIND_TAG] == "genai_development", "kept"


def test_the_experiment_link_opens_the_model_training_view():
    assert (
        tracking.experiment_ui_url("sqlite:////ws/mlflow.db", "3")
        == "http://127.0.0.1:5000/#/experiments/3?workflowType=machine_learning"
    )
    assert (
        tracking.experiment_ui_url("https://user:hunter2@mlflow.example:5000/", "7")
        == "https://user:***@mlflow.example:5000/#/experiments/7?workflowType=machine_learning"
    )
