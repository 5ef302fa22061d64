"""The whole pipeline against a real MLflow server on 127.0.0.1: runs, metrics and artifacts land there,
summary.json is written, and a rerun is all cached without new stage runs. A slow test renders the run's
page in the MLflow UI with headless Chromium (Debian's `chromium`; skipped with that reason when it is
missing); YOLOV2_SCREENSHOT_OUT=docs/mlflow-ui.png keeps the picture the README shows."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from pipelines import full, ray_runtime
from pipelines.config import PipelineConfig
from pipelines.dag import StageResult
from pipelines.faults import NO_FAULTS
from pipelines.stages import STAGE_NAMES, STAGES
from pipelines.workspace import Workspace
from test_cluster_scripts import _start_mlflow, free_port, stop_session, wait_http
from tiny_pipeline import TINY, set_args


def _post(base: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{base}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _get(base: str, path: str) -> dict:
    with urllib.request.urlopen(f"{base}/api/2.0/mlflow/{path}", timeout=30) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def mlflow_server(root) -> Iterator[str]:
    """A real `mlflow server` (cluster/mlflow_server.sh) on a free 127.0.0.1 port; yields its base URL."""
    port = free_port()
    server = _start_mlflow(root, port)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/health", server, timeout=120)
        yield base
    finally:
        stop_session(server)


def run_tiny_pipeline(tmp_path, base: str, experiment: str) -> tuple[list[str], dict]:
    """full.py at tiny size against the server: its arguments (for a rerun) and the summary it wrote."""
    args = [
        "--config",
        "configs/demo.yaml",
        "--workspace",
        str(tmp_path / "ws"),
        "--set",
        f"mlflow.tracking_uri={base}",
        "--set",
        f"mlflow.experiment={experiment}",
        *set_args(TINY),
    ]
    assert full.main(args) == 0
    return args, json.loads((tmp_path / "ws" / "summary.json").read_text())


def test_pipeline_logs_to_a_real_mlflow_server_and_reruns_cached(ray_local, tmp_path):
    with mlflow_server(tmp_path) as base:
        args, summary = run_tiny_pipeline(tmp_path, base, "full-test")
        assert [summary["stages"][s]["status"] for s in STAGE_NAMES] == ["done"] * 5
        assert "map50_voc07" in summary["metrics"] and 0.0 <= summary["metrics"]["map50_voc07"] <= 1.0

        experiment = _get(base, "experiments/get-by-name?experiment_name=full-test")["experiment"]
        runs = _post(base, "runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 100})["runs"]
        by_name = {r["info"]["run_name"]: r for r in runs}
        parent_id = summary["mlflow_parent_run_id"]
        assert set(by_name) == {"pipeline", *STAGE_NAMES}
        for stage in STAGE_NAMES:
            tags = {t["key"]: t["value"] for t in by_name[stage]["data"].get("tags", [])}
            assert tags["mlflow.parentRunId"] == parent_id
        metrics = {m["key"] for m in by_name["train"]["data"]["metrics"]}
        assert {"loss_total", "lr", "map50_voc07"} <= metrics
        evaluate_metrics = {m["key"]: m["value"] for m in by_name["evaluate"]["data"]["metrics"]}
        assert abs(evaluate_metrics["map50_voc07"] - summary["metrics"]["map50_voc07"]) < 1e-9
        artifacts = _get(base, f"artifacts/list?run_id={by_name['evaluate']['info']['run_id']}")
        assert "metrics.json" in {f["path"] for f in artifacts.get("files", [])}
        anchor_files = _get(base, f"artifacts/list?run_id={by_name['anchors']['info']['run_id']}")
        assert "anchors.png" in {f["path"] for f in anchor_files.get("files", [])}

        assert full.main(args) == 0  # the rerun: every stage cached, no new stage runs
        summary = json.loads((tmp_path / "ws" / "summary.json").read_text())
        assert [summary["stages"][s]["status"] for s in STAGE_NAMES] == ["cached"] * 5
        runs = _post(base, "runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 100})["runs"]
        names = sorted(r["info"]["run_name"] for r in runs)
        assert names == sorted(["pipeline", "pipeline", *STAGE_NAMES])
        rerun_parent = next(r for r in runs if r["info"]["run_id"] == summary["mlflow_parent_run_id"])
        tags = {t["key"]: t["value"] for t in rerun_parent["data"].get("tags", [])}
        assert tags["stage.train.cached_run_id"] == by_name["train"]["info"]["run_id"]


def test_stage_flags_on_the_command_line_come_from_the_stage_specs():
    declared = {flag.name: flag for spec in STAGES for flag in spec.flags}
    assert declared["resume"].keeps_partial_output  # train's --resume
    assert {name: flag for name, (flag, _) in full.registry_flags().items()} == declared
    help_text = full.build_parser().format_help()
    for flag in declared.values():
        assert flag.option in help_text
    args = full.build_parser().parse_args(["--resume"])
    assert args.resume is True and full.build_parser().parse_args([]).resume is False


def test_each_stage_gets_only_the_flags_it_declares(tmp_path, monkeypatch):
    calls = {}

    def fake_run_stage(spec, cfg, workspace, **kwargs):
        calls[spec.name] = kwargs["flags"]
        return StageResult(spec.name, "0" * 16, f"{spec.name}/x", {}, cached=False, seconds=0.0, run_id=None)

    monkeypatch.setattr(full, "run_stage", fake_run_stage)
    ws = Workspace.open(tmp_path / "ws")
    invocation = full.Invocation(
        PipelineConfig(), ws, STAGE_NAMES, frozenset(), {"resume": True}, tracking_enabled=False, faults=NO_FAULTS
    )
    summary: dict = {"stages": {}}
    assert full.run_selected(invocation, summary, {}) == 0
    assert calls == {"prepare": {}, "shard": {}, "anchors": {}, "train": {"resume": True}, "evaluate": {}}
    assert list(summary["stages"]) == list(STAGE_NAMES)


def test_a_selected_stage_without_its_upstream_exits_2_and_still_writes_the_summary(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ray_runtime, "connect", lambda *args, **kwargs: None)
    code = full.main(
        ["--config", "configs/demo.yaml", "--workspace", str(tmp_path / "ws"), "--no-mlflow", "--stages", "anchors"]
    )
    assert code == 2
    summary = json.loads((tmp_path / "ws" / "summary.json").read_text())
    assert summary["stages"] == {} and summary["metrics"] == {}
    assert "=== yolov2-pipeline summary ===" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--stages: unknown stage.s. anchor; stages are prepare, shard, anchors"):
        full.main(["--stages", "anchor"])


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_mlflow_ui_shows_the_pipeline_run(ray_local, tmp_path):
    with mlflow_server(tmp_path) as base:
        _, summary = run_tiny_pipeline(tmp_path, base, "ui-test")
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=ui-test") as r:
            experiment_id = json.loads(r.read())["experiment"]["experiment_id"]
        url = f"{base}/#/experiments/{experiment_id}/runs/{summary['mlflow_parent_run_id']}"
        shot = tmp_path / "mlflow-ui.png"
        subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--disable-quic",
                "--disable-sync",
                f"--user-data-dir={tmp_path / 'chrome'}",
                "--window-size=1400,1000",
                "--virtual-time-budget=20000",
                f"--screenshot={shot}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=180,
        )
        pixels = np.asarray(Image.open(shot).convert("L"), np.float32)
        assert pixels.shape == (1000, 1400)
        assert pixels.std() > 10  # a rendered page, not a blank one
        if os.environ.get("YOLOV2_SCREENSHOT_OUT"):
            shutil.copy(shot, os.environ["YOLOV2_SCREENSHOT_OUT"])
