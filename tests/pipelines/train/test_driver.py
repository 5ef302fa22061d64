"""The train stage (pipelines/train/driver.py) on real Ray Train: 2 CPU workers with gloo, a tiny model, tiny images.

Checks: the loss falls; ranks see disjoint samples and the same multi-scale size at every step; DDP keeps
the weights identical across ranks; MLflow gets the metrics from rank 0; validation on both ranks gives best.pt's
metrics as one process computes them, and the per-epoch results table (Parquet = CSV, in MLflow with its
figure) keeps the rows of the epochs before a restart or a resume; a worker that fails mid-run is
restarted from the last checkpoint with the same total step count, also when killed by SIGKILL (the metrics
go on in the stage's one MLflow run); a stopped run resumes; checkpoints load with weights_only=True; a
real MLflow server killed mid-training and restarted gets every step's metrics afterwards. (Without Ray:
tests/pipelines/train/test_checkpoints.py, test_worker.py; metrics that never reach a server are kept in a
file and reported: tests/pipelines/tracking/test_rank_zero.py.)
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from pipelines import prepare, shard, tracking
from pipelines.config import load_config
from pipelines.dag import StageResult, run_stage
from pipelines.faults import FaultPlan
from pipelines.train import driver as train
from pipelines.train.job import validation_predict
from pipelines.workspace import Workspace
from shapes_tree import shapes_tree
from yolov2.data.shards import shard_specs_from_index
from yolov2.data.synthetic import SHAPE_CLASSES
from yolov2.engine.checkpoint import load_checkpoint
from yolov2.engine.precision import choose_precision, detect_hardware
from yolov2.evaluation import predict_share, validation_metrics
from yolov2.inference import load_model_file
from yolov2.wordtree import write_tree

ANCHORS = [[0.4, 0.4], [0.8, 0.9], [1.3, 1.2], [1.8, 2.0], [2.6, 2.4]]


def _setup(tmp_path: Path, extra: list[str]):
    cfg = load_config(
        None,
        [
            f"workspace={tmp_path / 'ws'}",
            "data.synthetic.num_train=32",
            "data.synthetic.num_val=4",
            "data.synthetic.num_test=2",
            "data.synthetic.image_size=[96, 96]",
            "shard.max_count=9",
            "model.name=yolov2_tiny_voc",
            "model.width_multiplier=0.25",
            "train.num_workers=2",
            "train.batch_size=4",
            "train.effective_batch=16",
            "train.input_size=96",
            "train.multiscale_sizes=[64, 128, 32]",
            "train.multiscale_every=2",
            "train.burn_in=0",
            "train.lr=0.0005",
            "train.log_every=1",
            "train.register_name=null",
            *extra,
        ],
    )
    ws = Workspace.open(cfg.workspace)
    prepared = run_stage(prepare.SPEC, cfg, ws, tracking_enabled=False)
    sharded = run_stage(shard.SPEC, cfg, ws, upstream={"prepare": prepared}, tracking_enabled=False)
    anchors = StageResult("anchors", "a" * 16, "anchors/x", {"anchors": ANCHORS}, cached=True, seconds=0, run_id=None)
    return cfg, ws, {"shard": sharded, "anchors": anchors}


VAL_KEYS = ("map50_voc07", "map50_voc12", "coco_AP", "coco_AP50")


def expected_precision():
    """What ``amp: auto`` and ``channels_last: auto`` pick on this CPU, as the workers do."""
    return choose_precision(detect_hardware("cpu"))


def _epochs_in_results(ws: Workspace, result: StageResult) -> list[int]:
    table = ws.read_parquet(result.output_dir, "results.parquet")
    wall = table.column("wall_seconds").to_pylist()
    assert wall == sorted(wall) and all(w > 0 for w in wall)  # cumulative over the restart
    return table.column("epoch").to_pylist()


def _trace(trace_dir: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (trace_dir / f"batches-rank{rank}.jsonl").read_text().splitlines()]


def test_two_workers_loss_falls_ranks_agree_and_mlflow_gets_metrics(ray_local, tmp_path):
    import mlflow

    trace = tmp_path / "trace"
    trace.mkdir()
    cfg, ws, upstream = _setup(tmp_path, ["train.epochs=8", "train.val_every=8", "train.lr=0.002"])
    tracking.setup_mlflow(None, "train-test", ws)
    with mlflow.start_run(run_name="pipeline"):
        result = run_stage(train.SPEC, cfg, ws, upstream=upstream, faults=FaultPlan(train_trace_dir=str(trace)))
    assert result.manifest["steps"] == 8 * 2  # 32 images / (2 ranks x 4) = 4 micro-batches, 2 per step (16 / 8)

    ranks = [_trace(trace, 0), _trace(trace, 1)]
    for epoch in range(8):
        per_rank = [[b for b in r if b["epoch"] == epoch] for r in ranks]
        ids = [[i for b in batches for i in b["ids"]] for batches in per_rank]
        assert not set(ids[0]) & set(ids[1])  # disjoint samples
        assert len(ids[0]) + len(ids[1]) == 32 and len(set(ids[0]) | set(ids[1])) == 32  # every sample once
        assert [b["size"] for b in per_rank[0]] == [b["size"] for b in per_rank[1]]  # same size at each step
    assert len({b["size"] for b in ranks[0]}) > 1  # multi-scale really changes the size
    weights = [(trace / f"weights-rank{r}.txt").read_text() for r in (0, 1)]
    assert weights[0] == weights[1]  # DDP keeps the replicas' parameters identical

    history = mlflow.tracking.MlflowClient().get_metric_history(result.run_id, "loss_total")
    losses = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert len(losses) == 16
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4  # the loss falls

    # the precision auto picked on this CPU: in the manifest and the run's params
    expected = expected_precision()
    assert result.manifest["precision"]["amp"] == expected.amp
    assert result.manifest["precision"]["channels_last"] == expected.channels_last
    params = mlflow.tracking.MlflowClient().get_run(result.run_id).data.params
    assert params["precision.amp"] == expected.amp and params["precision.channels_last"] == str(expected.channels_last)

    # the per-epoch results table: one row per epoch, validation at epoch 8 only (val_every=8), CSV = Parquet
    table = ws.read_parquet(result.output_dir, "results.parquet")
    assert table.column("epoch").to_pylist() == list(range(1, 9))
    assert table.column("step").to_pylist() == [2 * e for e in range(1, 9)]
    val = {name: table.column(f"val_{name.lower()}").to_pylist() for name in VAL_KEYS}
    assert all(values[:7] == [None] * 7 and values[7] is not None for values in val.values())
    csv = pd.read_csv(ws.local_path(result.output_dir, "results.csv"))
    pd.testing.assert_frame_equal(csv, table.to_pandas(), check_exact=True)
    client = mlflow.tracking.MlflowClient()
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"results.parquet", "results.csv", "results.png"} <= artifacts
    # validated on both ranks: best.pt (epoch 8's model) scored in this one process gives the same numbers
    assert result.manifest["best"] == "best.pt" and result.manifest["best_epoch"] == 8
    logged = client.get_run(result.run_id).data.metrics
    best, spec = load_model_file(ws.local_path(result.output_dir, "best.pt"))
    shard_dir = upstream["shard"].output_dir
    index = ws.read_parquet(shard_dir, upstream["shard"].manifest["splits"]["val"]["index"])
    shards = shard_specs_from_index(index, ws.uri_of(shard_dir))
    part = predict_share(
        best, spec, shards, validation_predict(cfg.train, cfg.evaluate), cfg.evaluate.batch_size, expected_precision()
    )
    alone = validation_metrics(part.records, part.detections, spec.class_names, cfg.evaluate.coco_backend)
    for name in VAL_KEYS:
        assert val[name][7] == pytest.approx(alone[name], abs=1e-6) == logged[name], name

    blob = load_checkpoint(ws.local_path(result.output_dir, "model.pt"))  # weights_only
    assert blob["format"] == "yolov2-pipeline/model"
    model, spec = load_model_file(ws.local_path(result.output_dir, "model.pt"))
    assert spec.anchors == ANCHORS and spec.num_classes == 5
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 5 * 10, 2, 2)


@pytest.mark.fault
def test_failed_worker_restarts_from_checkpoint_and_stopped_run_resumes(ray_local, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    fault = FaultPlan(train_step=3, train_marker_dir=str(markers))  # in epoch 1, after epoch 0's checkpoint
    cfg, ws, upstream = _setup(tmp_path, ["train.epochs=3", "train.val_every=100", "train.max_failures=1"])
    recovered = run_stage(train.SPEC, cfg, ws, upstream=upstream, tracking_enabled=False, faults=fault)
    assert (markers / "train-step-3.failed").exists()  # the failure really happened
    assert recovered.manifest["steps"] == 6 and recovered.manifest["epochs"] == 3
    assert _epochs_in_results(ws, recovered) == [1, 2, 3]  # epoch 0's row came back with its checkpoint

    # A run that stops (no retries left) leaves its checkpoint; --resume continues from it.
    fault = FaultPlan(train_step=4, train_marker_dir=str(markers))
    cfg2, ws2, upstream2 = _setup(
        tmp_path / "second", ["train.epochs=3", "train.val_every=100", "train.max_failures=0"]
    )
    with pytest.raises(Exception, match="injected training failure"):
        run_stage(train.SPEC, cfg2, ws2, upstream=upstream2, tracking_enabled=False, faults=fault)
    resumed = run_stage(
        train.SPEC, cfg2, ws2, upstream=upstream2, tracking_enabled=False, flags={"resume": True}, faults=fault
    )
    assert resumed.manifest["resumed"] and resumed.manifest["steps"] == 6
    assert _epochs_in_results(ws2, resumed) == [1, 2, 3]


def test_ray_data_ingest_streams_disjoint_samples_at_the_shared_size(ray_local, tmp_path):
    """train.ingest=ray_data: Ray Data decodes and augments, each trainer gets its get_dataset_shard stream.
    31 images on 2 ranks: one repeat pads the split; every image once per epoch; same size per step."""
    trace = tmp_path / "trace"
    trace.mkdir()
    epochs = 2
    cfg, ws, upstream = _setup(
        tmp_path,
        [
            "train.ingest=ray_data",
            "data.synthetic.num_train=31",
            f"train.epochs={epochs}",
            "train.val_every=100",
            "train.lr=0.002",
        ],
    )
    result = run_stage(
        train.SPEC, cfg, ws, upstream=upstream, tracking_enabled=False, faults=FaultPlan(train_trace_dir=str(trace))
    )
    assert result.manifest["steps"] == epochs * 2  # 32 padded / (2 ranks x 4) = 4 micro-batches, 2 per step

    ranks = [_trace(trace, 0), _trace(trace, 1)]
    all_ids = {f"train_{i:06d}" for i in range(31)}
    for epoch in range(epochs):
        per_rank = [[b for b in r if b["epoch"] == epoch] for r in ranks]
        assert [len(b) for b in per_rank] == [4, 4]
        ids = [[i for b in batches for i, rep in zip(b["ids"], b["repeated"]) if not rep] for batches in per_rank]
        repeats = sum(rep for batches in per_rank for b in batches for rep in b["repeated"])
        assert repeats == 1 and not set(ids[0]) & set(ids[1])  # disjoint, one padding repeat
        assert sorted(ids[0] + ids[1]) == sorted(all_ids)  # every sample exactly once
        sizes = [[b["size"] for b in batches] for batches in per_rank]
        assert sizes[0] == sizes[1]  # the shared multi-scale schedule, step by step
    assert len({b["size"] for b in ranks[0]}) > 1
    weights = [(trace / f"weights-rank{r}.txt").read_text() for r in (0, 1)]
    assert weights[0] == weights[1]


@pytest.mark.slow  # ~140 s each on 2 busy cores: Ray starts the worker group twice
@pytest.mark.fault
@pytest.mark.parametrize("rank", [1, 0])
def test_sigkilled_worker_restarts_from_checkpoint_and_logs_into_the_same_mlflow_run(ray_local, tmp_path, rank):
    """A worker process dies by SIGKILL mid-epoch (no exception, no cleanup): Ray Train restarts the group
    from the last checkpoint, the step count is unchanged, and the metrics go on in the stage's one run."""
    import mlflow

    markers = tmp_path / "markers"
    markers.mkdir()
    # mid-epoch 1, after epoch 0's checkpoint (step 2)
    fault = FaultPlan(train_step=3, train_rank=rank, train_kind="sigkill", train_marker_dir=str(markers))
    cfg, ws, upstream = _setup(tmp_path, ["train.epochs=3", "train.val_every=100", "train.max_failures=1"])
    tracking.setup_mlflow(None, "train-sigkill", ws)
    with mlflow.start_run(run_name="pipeline") as parent:
        result = run_stage(train.SPEC, cfg, ws, upstream=upstream, faults=fault)
    assert (markers / "train-step-3.failed").read_text().startswith(f"rank {rank} ")  # the kill really happened
    assert result.manifest["steps"] == 6 and result.manifest["epochs"] == 3

    client = mlflow.tracking.MlflowClient()
    experiment = client.get_experiment_by_name("train-sigkill")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["pipeline", "train"]  # no second train run after the restart
    assert result.run_id == next(r.info.run_id for r in runs if r.info.run_name == "train")
    assert all(r.info.status == "FINISHED" for r in runs) and parent.info.run_id != result.run_id
    history = client.get_metric_history(result.run_id, "loss_total")
    steps = sorted(m.step for m in history)
    assert set(steps) == {1, 2, 3, 4, 5, 6}  # every step, those after the restart included
    # Resumed from epoch 0's checkpoint (step 2), not from step 0: steps 1-2 once; the steps rank 0 had
    # logged after it (3, and 4 when rank 1 died after its backward) were replayed, with the same values.
    assert steps.count(1) == steps.count(2) == steps.count(5) == steps.count(6) == 1
    assert 1 <= steps.count(3) <= 2 and 1 <= steps.count(4) <= 2
    for step in (3, 4):
        values = [m.value for m in history if m.step == step]
        assert max(values) - min(values) <= 1e-4 * abs(values[0])


def _wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def _start_server_on(root: Path, port: int, timeout: float = 120):
    """`mlflow server` (cluster/mlflow_server.sh) on that port; retried while the killed one's port is not free yet."""
    from test_cluster_scripts import _start_mlflow, stop_session, wait_http

    deadline = time.monotonic() + timeout
    while True:
        server = _start_mlflow(root, port)
        try:
            wait_http(f"http://127.0.0.1:{port}/health", server, timeout=max(1.0, deadline - time.monotonic()))
            return server
        except AssertionError:
            stop_session(server)
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


@pytest.mark.slow  # ~200 s on 2 busy cores (Ray's worker start-up, two MLflow server start-ups)
@pytest.mark.fault
def test_mlflow_server_killed_mid_training_gets_the_buffered_metrics_afterwards(ray_local, tmp_path, caplog):
    """A real MLflow server is SIGKILLed while training logs, and restarted on the same port and store:
    training goes on meanwhile, the stage completes, and every step's metrics are in the run, once."""
    import mlflow

    from test_cluster_scripts import free_port, stop_session

    trace = tmp_path / "trace"
    trace.mkdir()
    cfg, ws, upstream = _setup(tmp_path, ["train.epochs=6", "train.val_every=100"])  # 12 steps, 2 micro-batches each
    root, port = tmp_path / "server", free_port()
    root.mkdir()
    base = f"http://127.0.0.1:{port}"
    servers = [_start_server_on(root, port)]
    outage: dict = {}

    def micro_batches() -> int:  # rank 0's micro-batches so far (the trace hook writes one line each)
        path = trace / "batches-rank0.jsonl"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def kill_and_restart() -> None:
        try:
            _wait_until(lambda: micro_batches() >= 4, 300, "two training steps")
            os.killpg(servers[0].pid, signal.SIGKILL)
            servers[0].wait(timeout=30)
            outage["down_ms"], at_kill = time.time() * 1000, micro_batches()
            _wait_until(lambda: micro_batches() >= at_kill + 4, 120, "two more steps with the server down")
            outage["steps_while_down"] = True
            servers.append(_start_server_on(root, port))
            outage["up_ms"] = time.time() * 1000
        except BaseException as e:  # reported by the main thread
            outage["error"] = e

    try:
        tracking.setup_mlflow(base, "train-outage", ws)
        killer = threading.Thread(target=kill_and_restart)
        killer.start()
        with caplog.at_level(logging.INFO, logger="pipelines"), mlflow.start_run(run_name="pipeline"):
            result = run_stage(train.SPEC, cfg, ws, upstream=upstream, faults=FaultPlan(train_trace_dir=str(trace)))
        killer.join(timeout=300)
        assert "error" not in outage, outage.get("error")
        assert outage["steps_while_down"] and result.manifest["steps"] == 12  # training went on and finished

        client = mlflow.tracking.MlflowClient(base)  # the restarted server, same store
        history = client.get_metric_history(result.run_id, "loss_total")
        assert sorted(m.step for m in history) == list(range(1, 13))  # every step, each once
        measured_while_down = [m for m in history if outage["down_ms"] <= m.timestamp <= outage["up_ms"]]
        assert len(measured_while_down) >= 2  # values logged while the server was dead reached it afterwards
        assert client.get_run(result.run_id).info.status == "FINISHED"
        delivery = result.manifest["mlflow_delivery"]
        assert delivery["outages"] >= 1 and delivery["sent_late"] >= 2 * 11 and delivery["unsent"] == 0
        assert not ws.exists(result.output_dir, tracking.UNSENT_METRICS)
        assert any("buffered and sent afterwards" in r.getMessage() for r in caplog.records)  # the stage says so
    finally:
        for server in servers:
            stop_session(server)


def test_a_tree_model_trains_on_node_labels_and_class_only_samples(ray_local, tmp_path):
    """model.tree with data.class_only_root (YOLO9000): the shapes under two parents, and two colour leaves of the
    circle known only from an image folder. The head predicts the tree's nodes, the batches mix the folder's
    classification-only images in at train.class_only_ratio, and validation scores the dataset's detection classes
    through ModelSpec.tree_classes."""
    tree = shapes_tree({"circle": ["circle_red", "circle_blue"]})
    write_tree(tree, tmp_path / "shapes.tree")
    folder = tmp_path / "colours"
    for leaf, colour in (("circle_red", (220, 30, 30)), ("circle_blue", (30, 30, 220))):
        (folder / leaf).mkdir(parents=True)
        for i in range(4):
            image = np.full((40 + 4 * i, 40, 3), 127, np.uint8)
            cv2.circle(image, (20, 20 + 2 * i), 15, colour, -1)
            cv2.imwrite(str(folder / leaf / f"{i}.jpg"), image[..., ::-1])
    trace = tmp_path / "trace"
    trace.mkdir()
    options = [
        "train.epochs=2",
        "train.val_every=2",
        f"model.tree={tmp_path / 'shapes.tree'}",
        f"data.class_only_root={folder}",
        "train.class_only_ratio=0.5",
    ]
    cfg, ws, upstream = _setup(tmp_path, options)
    sharded = upstream["shard"].manifest
    assert sharded["class_names"] == [*SHAPE_CLASSES, "circle_blue", "circle_red"]
    assert sharded["splits"]["train_class_only"]["images"] == 8
    result = run_stage(
        train.SPEC, cfg, ws, upstream=upstream, tracking_enabled=False, faults=FaultPlan(train_trace_dir=str(trace))
    )
    model, spec = load_model_file(ws.local_path(result.output_dir, "model.pt"))
    assert spec.word_tree() == tree and spec.num_classes == 9
    assert [tree.names[node] for node in spec.tree_classes] == spec.class_names == sharded["class_names"]
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 5 * (5 + 9), 2, 2)
    ids = [i for rank in (0, 1) for batch in _trace(trace, rank) for i in batch["ids"]]
    folder_ids = [i for i in ids if i.startswith("circle_")]
    assert len(folder_ids) == 2 * 16 and len(ids) - len(folder_ids) == 2 * 32  # 0.5 per detection image, 2 epochs
    rows = ws.read_parquet(result.output_dir, "results.parquet").to_pylist()
    assert len(rows) == 2 and rows[-1]["val_map50_voc07"] is not None
