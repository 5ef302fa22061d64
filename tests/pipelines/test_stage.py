"""Fingerprints, manifests and skip-if-done: the rerun contract every stage relies on."""

from __future__ import annotations

import pytest

from yolov2.config import PipelineConfig, load_config

from pipelines.stage import MANIFEST, StageError, downstream_of, fingerprint, load_result, run_stage
from pipelines.workspace import Workspace


def test_fingerprint_depends_on_own_config_and_upstream_only():
    base = PipelineConfig()
    assert fingerprint(base, "anchors") == fingerprint(PipelineConfig(), "anchors")
    other = load_config(None, ["anchors.k=9"])
    assert fingerprint(other, "anchors") != fingerprint(base, "anchors")
    assert fingerprint(other, "shard") == fingerprint(base, "shard")  # upstream unaffected
    assert fingerprint(other, "train") != fingerprint(base, "train")  # downstream follows
    evaluate_only = load_config(None, ["evaluate.nms_thresh=0.5"])
    assert fingerprint(evaluate_only, "train") == fingerprint(base, "train")
    data_change = load_config(None, ["data.synthetic.seed=3"])
    assert all(fingerprint(data_change, s) != fingerprint(base, s) for s in ["prepare", "shard", "evaluate"])


def test_downstream_of():
    assert downstream_of(["anchors"]) == {"anchors", "train", "evaluate"}
    assert downstream_of(["prepare"]) == {"prepare", "shard", "anchors", "train", "evaluate"}
    assert downstream_of([]) == set()


def test_run_stage_caches_and_force_reruns(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    cfg = PipelineConfig()
    calls = []

    def body(ctx):
        calls.append(ctx.output_dir)
        ctx.workspace.write_bytes(b"data", ctx.out("file.bin"))
        return {"value": len(calls)}

    first = run_stage("prepare", cfg, ws, body, tracking_enabled=False)
    assert not first.cached and first.manifest["value"] == 1
    again = run_stage("prepare", cfg, ws, body, tracking_enabled=False)
    assert again.cached and again.manifest["value"] == 1 and len(calls) == 1
    forced = run_stage("prepare", cfg, ws, body, force=True, tracking_enabled=False)
    assert not forced.cached and forced.manifest["value"] == 2
    assert ws.read_bytes(forced.output_dir, "file.bin") == b"data"


@pytest.mark.fault
def test_crashed_body_leaves_no_manifest_and_rerun_starts_clean(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    cfg = PipelineConfig()

    def crashing(ctx):
        ctx.workspace.write_bytes(b"half", ctx.out("partial.bin"))
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run_stage("prepare", cfg, ws, crashing, tracking_enabled=False)
    assert load_result(cfg, ws, "prepare") is None
    result = run_stage("prepare", cfg, ws, lambda ctx: {"ok": True}, tracking_enabled=False)
    assert not ws.exists(result.output_dir, "partial.bin")  # leftovers of the crash are gone
    assert ws.exists(result.output_dir, MANIFEST)


def test_missing_upstream_names_the_command_to_run(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    with pytest.raises(StageError, match=r"pipelines/shard\.py"):
        run_stage("anchors", PipelineConfig(), ws, lambda ctx: {}, tracking_enabled=False)


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    ws = Workspace.open(tmp_path)
    with pytest.raises(ValueError):
        with ws.atomic_output("dir", "f.bin") as stream:
            stream.write(b"x" * 100)
            raise ValueError("boom")
    assert ws.list_dir("dir") == []


def test_stage_runs_are_logged_to_mlflow_nested_under_parent(tmp_path):
    import mlflow

    from pipelines import tracking

    ws = Workspace.open(tmp_path / "ws")
    uri = tracking.setup_mlflow(None, "test-exp", ws)
    assert uri.startswith("sqlite:///") and (tmp_path / "ws" / "mlflow.db").exists()

    def body(ctx):
        ctx.log_metrics({"answer": 42.0})
        return {}

    with mlflow.start_run(run_name="pipeline") as parent:
        result = run_stage("prepare", PipelineConfig(), ws, body)
    run = mlflow.get_run(result.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert run.data.metrics["answer"] == 42.0
    assert run.data.params["data.kind"] == "synthetic"
    assert load_result(PipelineConfig(), ws, "prepare").run_id == result.run_id


@pytest.mark.fault
def test_a_second_run_waits_for_the_lock_or_fails_clearly(tmp_path):
    import fcntl
    import threading

    from pipelines.stage import fingerprint

    ws = Workspace.open(tmp_path / "ws")
    cfg = PipelineConfig()
    fp = fingerprint(cfg, "prepare")
    (tmp_path / "ws" / "locks").mkdir()
    holder = open(tmp_path / "ws" / "locks" / f"prepare-{fp}.lock", "a+")
    fcntl.flock(holder, fcntl.LOCK_EX)  # "another run" is writing this output
    calls = []
    with pytest.raises(StageError, match="being written by another run"):
        run_stage("prepare", cfg, ws, lambda ctx: calls.append(1) or {}, tracking_enabled=False, lock_wait=0.5)
    assert calls == [] and load_result(cfg, ws, "prepare") is None

    def other_run_finishes() -> None:  # the holder completes the stage, then releases the lock
        ws.makedirs(f"prepare/{fp}")
        ws.write_json({"by": "other"}, f"prepare/{fp}", MANIFEST)
        fcntl.flock(holder, fcntl.LOCK_UN)

    timer = threading.Timer(0.5, other_run_finishes)
    timer.start()
    result = run_stage("prepare", cfg, ws, lambda ctx: calls.append(1) or {}, tracking_enabled=False, lock_wait=30)
    timer.join()
    holder.close()
    assert result.cached and result.manifest == {"by": "other"} and calls == []  # waited, then reused it


@pytest.mark.fault
def test_mlflow_server_dying_during_a_stage_skips_the_logging_instead_of_failing_the_finished_stage(tmp_path, caplog):
    """A real MLflow server is stopped while a stage body runs and stays down. Unguarded, MLflow retries each call
    for minutes and then raises: the finished stage fails and its work is redone. Guarded, the stage ends in
    seconds, its manifest names the calls it could not log, a rerun is a cache hit, and once a server is back on
    the same store the run holds what was logged before the outage."""
    import time

    import mlflow
    from test_cluster_scripts import _start_mlflow, free_port, stop_session, wait_http

    from pipelines import tracking

    def start_server() -> tuple[object, str]:
        port = free_port()
        server = _start_mlflow(tmp_path, port)  # the store is tmp_path/ws, kept across restarts
        wait_http(f"http://127.0.0.1:{port}/health", server, timeout=120)
        return server, f"http://127.0.0.1:{port}"

    server, base = start_server()
    try:
        ws = Workspace.open(tmp_path / "stage-ws")
        tracking.setup_mlflow(base, "server-dies", ws)

        def body(ctx):
            ctx.log_metrics({"before": 1.0})
            stop_session(server)
            ctx.log_metrics({"after": 2.0})
            ctx.log_artifact_bytes(b"late", "late.txt")
            return {"work": "done"}

        started = time.monotonic()
        with caplog.at_level("WARNING", logger="pipelines"):
            result = run_stage("prepare", PipelineConfig(), ws, body)
        elapsed = time.monotonic() - started
    finally:
        stop_session(server)
    assert elapsed < 60, f"the stage took {elapsed:.0f}s: it waited on the dead server"
    assert result.manifest["work"] == "done"
    assert result.manifest["mlflow_not_logged"] == [
        "metrics after", "artifact late.txt", "metrics stage_seconds", "end of run (FINISHED)"]
    assert "is not answering" in caplog.text and "its output is complete" in caplog.text
    assert mlflow.active_run() is None  # nothing left open for the next stage to nest under
    assert load_result(PipelineConfig(), ws, "prepare").manifest == result.manifest

    server, base = start_server()
    try:
        run = mlflow.MlflowClient(base).get_run(result.run_id)
    finally:
        stop_session(server)
    assert run.data.metrics == {"before": 1.0}
    assert run.data.tags["stage"] == "prepare"
    assert run.info.status == "RUNNING"
