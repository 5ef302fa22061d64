"""Rank 0's MLflow logger: metrics that never reach a server are kept in a file, and the driver's report
names it. (The logger under a real server killed mid-training: tests/pipelines/test_train.py.)"""

from __future__ import annotations

import json
import logging

import pytest

from pipelines import tracking
from pipelines.workspace import Workspace


@pytest.mark.fault
def test_metrics_unsent_when_training_ends_are_kept_in_a_file_and_reported(tmp_path, caplog):
    """No server at all until the end (a closed port, real MLflow client): after flush_timeout the values
    are written to the stage output, and the driver's report names the file."""
    from test_cluster_scripts import free_port

    ws = Workspace.open(tmp_path)
    logger = tracking.RankZeroLogger(
        f"http://127.0.0.1:{free_port()}", "0123456789abcdef", 0, 2, ws, "out", flush_timeout=1.0
    )
    logger.log({"loss/total": 3.5, "lr": 0.001}, 1)
    logger.log({"loss/total": 2.5, "lr": 0.001}, 2)
    logger.close(2)
    kept = [json.loads(line) for line in (tmp_path / "out" / tracking.UNSENT_METRICS).read_text().splitlines()]
    assert [(m["key"], m["value"], m["step"]) for m in kept] == [
        ("loss_total", 3.5, 1),
        ("lr", 0.001, 1),
        ("loss_total", 2.5, 2),
        ("lr", 0.001, 2),
    ]
    with caplog.at_level(logging.WARNING, logger="pipelines.tracking"):
        report = tracking.report_delivery(ws, "out")
    assert report["unsent"] == 4 and report["sent"] == 0 and report["outages"] == 1
    assert any(str(tmp_path / "out" / tracking.UNSENT_METRICS) in r.getMessage() for r in caplog.records)
