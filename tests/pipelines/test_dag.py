"""pipelines/dag.py: fingerprints, manifests, skip-if-done and stage flags: the rerun contract every stage
relies on."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from pipelines.config import PipelineConfig, load_config, to_dict
from pipelines.dag import (
    MANIFEST,
    StageError,
    StageFlag,
    StageSpec,
    downstream_of,
    fingerprint,
    load_result,
    run_stage,
)
from pipelines.stages import STAGES, stage_named
from pipelines.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]
PREPARE = stage_named("prepare")


def with_body(spec: StageSpec, body) -> StageSpec:
    """The stage with another body: same name, config keys, version and upstream, so the same fingerprint."""
    return dataclasses.replace(spec, body=body)


def fp(cfg: PipelineConfig, name: str) -> str:
    return fingerprint(cfg, stage_named(name))


def test_fingerprint_depends_on_own_config_and_upstream_only():
    base = PipelineConfig()
    assert fp(base, "anchors") == fp(PipelineConfig(), "anchors")
    other = load_config(None, ["anchors.k=9"])
    assert fp(other, "anchors") != fp(base, "anchors")
    assert fp(other, "shard") == fp(base, "shard")  # upstream unaffected
    assert fp(other, "train") != fp(base, "train")  # downstream follows
    evaluate_only = load_config(None, ["evaluate.nms_thresh=0.5"])
    assert fp(evaluate_only, "train") == fp(base, "train")
    data_change = load_config(None, ["data.synthetic.seed=3"])
    assert all(fp(data_change, s) != fp(base, s) for s in ["prepare", "shard", "evaluate"])


def test_fingerprint_is_the_hash_of_the_documented_payload():
    """The payload (stage name, version, config sections, upstream fingerprints) written out by hand: a change
    to its form would invalidate every existing workspace's outputs."""
    cfg = load_config(REPO / "configs/demo.yaml")
    data = to_dict(cfg)["data"]

    def digest(payload: dict) -> str:
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    prepare_fp = digest(
        {
            "stage": "prepare",
            "version": 2,
            "upstream": {},
            "config": {
                "data.kind": data["kind"],
                "data.root": data["root"],
                "data.download": data["download"],
                "data.synthetic": data["synthetic"],
            },
        }
    )
    shard_fp = digest(
        {
            "stage": "shard",
            "version": 2,
            "upstream": {"prepare": prepare_fp},
            "config": {
                "data.splits": data["splits"],
                "data.class_names": data["class_names"],
                "data.skip_unknown_classes": data["skip_unknown_classes"],
                "data.val_fraction": data["val_fraction"],
                "data.val_seed": data["val_seed"],
                "data.strict": data["strict"],
                "data.max_image_pixels": data["max_image_pixels"],
                "data.class_only_root": data["class_only_root"],
                "shard": to_dict(cfg)["shard"],
            },
        }
    )
    assert fp(cfg, "prepare") == prepare_fp
    assert fp(cfg, "shard") == shard_fp


def test_downstream_of():
    cfg = PipelineConfig()
    assert downstream_of(STAGES, ["anchors"], cfg) == {"anchors", "tune", "train", "evaluate"}
    everything = {"prepare", "shard", "anchors", "pretrain", "tune", "train", "evaluate"}
    assert downstream_of(STAGES, ["prepare"], cfg) == everything  # pretrain: crops of the shard stage's boxes
    assert downstream_of(STAGES, [], cfg) == set()
    # train reads the tune stage's result only with train.from_tune
    assert downstream_of(STAGES, ["tune"], cfg) == {"tune"}
    tuned = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, from_tune=True))
    assert downstream_of(STAGES, ["tune"], tuned) == {"tune", "train", "evaluate"}
    # and the pretrain stage's backbone (tune's trials too) only with train.init_from: pretrain; shapes need no shards
    assert downstream_of(STAGES, ["pretrain"], cfg) == {"pretrain"}
    pretrained = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from="pretrain"))
    assert downstream_of(STAGES, ["pretrain"], pretrained) == {"pretrain", "tune", "train", "evaluate"}
    shapes = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, source="synthetic"))
    assert "pretrain" not in downstream_of(STAGES, ["shard"], shapes)


def test_run_stage_caches_and_force_reruns(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    cfg = PipelineConfig()
    calls = []

    def body(ctx):
        calls.append(ctx.output_dir)
        ctx.workspace.write_bytes(b"data", ctx.out("file.bin"))
        return {"value": len(calls)}

    spec = with_body(PREPARE, body)
    first = run_stage(spec, cfg, ws, tracking_enabled=False)
    assert not first.cached and first.manifest["value"] == 1
    again = run_stage(spec, cfg, ws, tracking_enabled=False)
    assert again.cached and again.manifest["value"] == 1 and len(calls) == 1
    forced = run_stage(spec, cfg, ws, force=True, tracking_enabled=False)
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
        run_stage(with_body(PREPARE, crashing), cfg, ws, tracking_enabled=False)
    assert load_result(cfg, ws, PREPARE) is None
    result = run_stage(with_body(PREPARE, lambda ctx: {"ok": True}), cfg, ws, tracking_enabled=False)
    assert not ws.exists(result.output_dir, "partial.bin")  # leftovers of the crash are gone
    assert ws.exists(result.output_dir, MANIFEST)


def test_missing_upstream_names_the_command_to_run(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    with pytest.raises(StageError, match=r"python -m pipelines\.shard --config"):
        run_stage(with_body(stage_named("anchors"), lambda ctx: {}), PipelineConfig(), ws, tracking_enabled=False)


RESUME = StageFlag("resume", "continue from what an interrupted attempt left", keeps_partial_output=True)
VERBOSE = StageFlag("verbose", "say more")


def test_body_gets_every_declared_flag_and_only_those(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    seen = []
    spec = dataclasses.replace(PREPARE, body=lambda ctx, **flags: seen.append(flags) or {}, flags=(RESUME, VERBOSE))
    run_stage(spec, PipelineConfig(), ws, tracking_enabled=False, flags={"verbose": True})
    assert seen == [{"resume": False, "verbose": True}]  # an unset flag is False
    with pytest.raises(StageError, match="has no flag fast"):
        run_stage(spec, PipelineConfig(), ws, force=True, tracking_enabled=False, flags={"fast": True})
    with pytest.raises(StageError, match=r"has no flag resume \(its flags: none\)"):
        run_stage(PREPARE, PipelineConfig(), ws, force=True, tracking_enabled=False, flags={"resume": True})
    assert len(seen) == 1


def test_a_flag_that_keeps_partial_output_keeps_an_interrupted_attempts_files(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    cfg = PipelineConfig()

    def crashing(ctx, **flags):
        ctx.workspace.write_bytes(b"checkpoint", ctx.out("state.pt"))
        raise RuntimeError("killed")

    def resuming(ctx, resume: bool = False, verbose: bool = False):
        return {"found": ctx.workspace.exists(ctx.output_dir, "state.pt"), "resume": resume}

    with pytest.raises(RuntimeError):
        run_stage(dataclasses.replace(PREPARE, body=crashing, flags=(RESUME, VERBOSE)), cfg, ws, tracking_enabled=False)
    spec = dataclasses.replace(PREPARE, body=resuming, flags=(RESUME, VERBOSE))
    kept = run_stage(spec, cfg, ws, tracking_enabled=False, flags={"resume": True})
    assert kept.manifest["found"] is True and kept.manifest["resume"] is True
    ws.write_bytes(b"checkpoint", kept.output_dir, "state.pt")
    fresh = run_stage(spec, cfg, ws, force=True, tracking_enabled=False, flags={"verbose": True})  # not a keeping flag
    assert fresh.manifest["found"] is False and fresh.manifest["resume"] is False


def test_stage_run_gets_the_fault_plan_passed_and_none_by_default(tmp_path, monkeypatch):
    from pipelines.faults import NO_FAULTS, FaultPlan

    monkeypatch.setenv("YOLOV2_FAULT_SHARD_DIR", str(tmp_path))  # read by the command-line entry points only
    ws = Workspace.open(tmp_path / "ws")
    plans = []
    spec = with_body(PREPARE, lambda ctx: plans.append(ctx.faults) or {})
    run_stage(spec, PipelineConfig(), ws, tracking_enabled=False)
    plan = FaultPlan(shard_kind="hold", shard_marker_dir="/markers")
    run_stage(spec, PipelineConfig(), ws, force=True, tracking_enabled=False, faults=plan)
    assert plans == [NO_FAULTS, plan]


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    ws = Workspace.open(tmp_path)
    with pytest.raises(ValueError), ws.atomic_output("dir", "f.bin") as stream:
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
        result = run_stage(with_body(PREPARE, body), PipelineConfig(), ws)
    run = mlflow.get_run(result.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert run.data.metrics["answer"] == 42.0
    assert run.data.params["data.kind"] == "synthetic"
    assert load_result(PipelineConfig(), ws, PREPARE).run_id == result.run_id


@pytest.mark.fault
def test_a_second_run_waits_for_the_lock_or_fails_clearly(tmp_path):
    import fcntl
    import threading

    ws = Workspace.open(tmp_path / "ws")
    cfg = PipelineConfig()
    prepare_fp = fingerprint(cfg, PREPARE)
    (tmp_path / "ws" / "locks").mkdir()
    with open(tmp_path / "ws" / "locks" / f"prepare-{prepare_fp}.lock", "a+") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)  # "another run" is writing this output
        calls = []
        with pytest.raises(StageError, match="being written by another run"):
            run_stage(
                with_body(PREPARE, lambda ctx: calls.append(1) or {}), cfg, ws, tracking_enabled=False, lock_wait=0.5
            )
        assert calls == [] and load_result(cfg, ws, PREPARE) is None

        def other_run_finishes() -> None:  # the holder completes the stage, then releases the lock
            ws.makedirs(f"prepare/{prepare_fp}")
            ws.write_json({"by": "other"}, f"prepare/{prepare_fp}", MANIFEST)
            fcntl.flock(holder, fcntl.LOCK_UN)

        timer = threading.Timer(0.5, other_run_finishes)
        timer.start()
        result = run_stage(
            with_body(PREPARE, lambda ctx: calls.append(1) or {}), cfg, ws, tracking_enabled=False, lock_wait=30
        )
        timer.join()
    assert result.cached and result.manifest == {"by": "other"} and calls == []  # waited, then reused it


@pytest.mark.fault
def test_mlflow_server_dying_during_a_stage_skips_the_logging_instead_of_failing_the_finished_stage(tmp_path, caplog):
    """A real MLflow server is stopped while a stage body runs and stays down. Unguarded, MLflow retries each call
    for minutes and then raises: the finished stage fails and its work is redone. Guarded, the stage ends in
    seconds, its manifest names the calls it could not log, a rerun is a cache hit, and once a server is back on
    the same store the run holds what was logged before the outage."""
    import time

    import mlflow

    from pipelines import tracking
    from test_cluster_scripts import _start_mlflow, free_port, stop_session, wait_http

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
            result = run_stage(with_body(PREPARE, body), PipelineConfig(), ws)
        elapsed = time.monotonic() - started
    finally:
        stop_session(server)
    assert elapsed < 60, f"the stage took {elapsed:.0f}s: it waited on the dead server"
    assert result.manifest["work"] == "done"
    assert result.manifest["mlflow_not_logged"] == [
        "metrics after",
        "artifact late.txt",
        "metrics stage_seconds",
        "end of run (FINISHED)",
    ]
    assert "is not answering" in caplog.text and "its output is complete" in caplog.text
    assert mlflow.active_run() is None  # nothing left open for the next stage to nest under
    assert load_result(PipelineConfig(), ws, PREPARE).manifest == result.manifest

    server, base = start_server()
    try:
        run = mlflow.MlflowClient(base).get_run(result.run_id)
    finally:
        stop_session(server)
    assert run.data.metrics == {"before": 1.0}
    assert run.data.tags["stage"] == "prepare"
    assert run.info.status == "RUNNING"
