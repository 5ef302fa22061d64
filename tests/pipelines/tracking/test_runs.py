"""A stage's MLflow run ends with the status of what happened inside; the guard that keeps a dead server
from holding a stage up."""

from __future__ import annotations

import contextlib
import socket

import pytest

from pipelines import tracking
from pipelines.workspace import Workspace


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the with-block ends: nothing listens there


@pytest.mark.parametrize("raised, status", [(None, "FINISHED"), (ValueError, "FAILED"), (KeyboardInterrupt, "KILLED")])
def test_guarded_run_ends_with_the_status_of_what_happened_inside(tmp_path, raised, status):
    import mlflow

    tracking.setup_mlflow(None, "guarded", Workspace.open(tmp_path))
    with pytest.raises(raised) if raised else contextlib.nullcontext(), tracking.guarded_run("stage") as guard:
        assert guard.call("metrics", mlflow.log_metric, "x", 1.0)  # the SQLite store always answers
        if raised:
            raise raised()
    assert mlflow.active_run() is None
    assert mlflow.get_run(guard.run_id).info.status == status
    assert guard.skipped == []


def test_a_guarded_run_whose_failure_was_handled_inside_ends_failed(tmp_path):
    import mlflow

    tracking.setup_mlflow(None, "guarded", Workspace.open(tmp_path))
    with tracking.guarded_run("pipeline") as guard:
        guard.fail()  # e.g. full.py caught a stage's error, reported it, and goes on to write its summary
    assert mlflow.get_run(guard.run_id).info.status == "FAILED"


def test_guard_skips_and_names_calls_while_the_server_does_not_answer():
    calls = []
    guard = tracking.TrackingGuard(f"http://127.0.0.1:{_closed_port()}", health_timeout=1.0)
    assert not guard.call("metrics loss", calls.append, 1)
    assert not guard.call("artifact plot.png", calls.append, 2)
    assert calls == [] and guard.skipped == ["metrics loss", "artifact plot.png"]
