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
