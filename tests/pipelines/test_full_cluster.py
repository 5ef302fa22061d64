"""`pipelines/full.py` on the two-node Ray cluster of `cluster/local_cluster.sh` (a head and a worker node,
separate `ray start` processes, 1 CPU each, custom resources node_head / node_worker), submitted with
`ray job submit`, and Ray's state API as the witness that every parallel stage used both nodes: the shard
tasks, the anchors k-means tasks, the train workers and evaluate's inference actors.

Why each stage must use both nodes here: each node advertises 1 CPU, every one of these tasks and actors
asks for 1 CPU (evaluate's actors 0.75) and each stage starts at least two at once, which one node cannot
run together. That alone was not enough: Ray reuses a busy worker lease for the next queued task of the same
function while the lease is younger than 0.5 s, and tiny shard tasks all ran on the head while the worker
node was still starting its first worker process; and with 4 test images the first evaluate actor to load
the model took every batch. So the shard stage pins its first task on each node (pipelines/shard.py) and
evaluate feeds its actor pool only once every actor is up (pipelines/evaluate.py).

The tune stage's trials, one worker each and two at a time, likewise land on both nodes.

Slow (about 5 minutes each on 2 cores): `make test-slow`, or `.venv/bin/pytest tests/pipelines/test_full_cluster.py`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import uuid
from collections.abc import Iterator

import pyarrow.parquet as pq
import pytest

from pipelines.stages import STAGE_NAMES
from test_cluster_scripts import CLUSTER, VENV_BIN, pick_cluster_port, run
from tiny_pipeline import TINY, set_args

# On top of the tiny pipeline: at least two tasks or actors per stage, each needing a whole node.
TWO_NODES = [
    "shard.max_count=2",  # 8 + 2 + 2 = 12 shard tasks, several per node
    "anchors.partitions=4",  # 4 assign tasks per k-means iteration
    "train.num_workers=2",
    "train.cpus_per_worker=1",
    "evaluate.num_actors=2",
    "evaluate.cpus_per_actor=0.75",
]


def _nodes_by_resource(address: str) -> dict[str, str]:
    """{"node_head": node id, "node_worker": node id} of the alive nodes."""
    from ray.util.state import list_nodes

    found = {}
    for node in list_nodes(address=address, filters=[("state", "=", "ALIVE")], detail=True):
        for name in ("node_head", "node_worker"):
            if name in node.resources_total:
                found[name] = node.node_id
    return found


def _task_nodes(address: str, job_id: str, name: str) -> list[str]:
    """Node id of every finished task (or actor task) named ``name`` of the job."""
    from ray.util.state import list_tasks

    tasks = list_tasks(
        address=address, filters=[("job_id", "=", job_id), ("name", "=", name)], limit=10_000, detail=True
    )
    return [t.node_id for t in tasks if t.state == "FINISHED"]


def _actor_nodes(address: str, job_id: str, class_name: str) -> list[str]:
    from ray.util.state import list_actors

    actors = list_actors(
        address=address, filters=[("job_id", "=", job_id), ("class_name", "=", class_name)], limit=10_000, detail=True
    )
    print(class_name, [(a.state, a.node_id) for a in actors], file=sys.stderr)  # shown on failure
    return [a.node_id for a in actors]


@contextlib.contextmanager
def two_node_cluster(ray_token_file) -> Iterator[tuple[str, dict[str, str], dict[str, str]]]:
    """`cluster/local_cluster.sh` up (1 CPU per node) for the test, down after it: (address, env, node ids by
    custom resource); skips when the cluster cannot start here."""
    port = pick_cluster_port()
    temp_dir = f"/tmp/yolov2-f{port}"
    # The cluster uses the test session's token, which this process's Ray already presents: the state API
    # calls below, from this process, are let in.
    cluster = [
        str(CLUSTER / "local_cluster.sh"),
        "--port",
        str(port),
        "--temp-dir",
        temp_dir,
        "--cpus",
        "1",
        "--token-file",
        str(ray_token_file),
    ]
    env = dict(
        os.environ,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(ray_token_file),
        NO_ALBUMENTATIONS_UPDATE="1",
        PATH=f"{VENV_BIN}:{os.environ['PATH']}",
    )
    address = f"127.0.0.1:{port}"
    try:
        up = run([*cluster[:1], "up", *cluster[1:]], env=env, timeout=300, cwd="/")
        if up.returncode != 0:
            pytest.skip(
                f"the two-node Ray cluster did not start (local_cluster.sh up exited {up.returncode}): "
                f"{(up.stdout + up.stderr).strip()[-600:]}"
            )
        nodes = _nodes_by_resource(address)
        assert set(nodes) == {"node_head", "node_worker"} and len(set(nodes.values())) == 2, nodes
        yield address, env, nodes
    finally:
        down = run([*cluster[:1], "down", *cluster[1:]], env=env, timeout=180)
    assert down.returncode == 0, down.stdout + down.stderr


def submit(address: str, env: dict[str, str], submission_id: str, args: list[str]) -> None:
    """``ray job submit`` of ``python pipelines/full.py <args>`` to the cluster at ``address``; asserts it succeeded."""
    port = int(address.rsplit(":", 1)[1])
    job = run(
        [
            str(VENV_BIN / "ray"),
            "job",
            "submit",
            "--address",
            f"http://127.0.0.1:{port + 1}",
            "--submission-id",
            submission_id,
            "--",
            "python",
            "pipelines/full.py",
            "--config",
            "configs/demo.yaml",
            *args,
        ],
        env=env,
        timeout=900,
    )
    assert job.returncode == 0, (job.stdout + job.stderr)[-4000:]


@pytest.mark.slow
def test_full_pipeline_spreads_every_parallel_stage_over_two_nodes(tmp_path, ray_token_file):
    workspace = tmp_path / "ws"
    with two_node_cluster(ray_token_file) as (address, env, nodes):
        port = int(address.rsplit(":", 1)[1])
        submission_id = f"yolov2-full-{uuid.uuid4().hex[:8]}"
        submit(address, env, submission_id, ["--workspace", str(workspace), *set_args(TINY + TWO_NODES)])
        summary = json.loads((workspace / "summary.json").read_text())
        assert [summary["stages"][s]["status"] for s in STAGE_NAMES if s not in ("pretrain", "tune")] == ["done"] * 5

        from ray.job_submission import JobSubmissionClient

        job_id = JobSubmissionClient(f"http://127.0.0.1:{port + 1}").get_job_info(submission_id).job_id
        assert job_id, "the submitted job has no Ray job id"
        (shard_manifest,) = workspace.glob("shard/*/manifest.json")
        shards = [s for split in json.loads(shard_manifest.read_text())["splits"].values() for s in split["shards"]]
        assert len(shards) == 12

        ran = {
            "shard": _task_nodes(address, job_id, "_remote_write_shard"),
            "anchors": _task_nodes(address, job_id, "_assign_partition"),
            "train workers": _actor_nodes(address, job_id, "RayTrainWorker"),
            "evaluate actors": _actor_nodes(address, job_id, "MapWorker(MapBatches(DetectActor))"),
        }
        where = {stage: {name: ids.count(node) for name, node in nodes.items()} for stage, ids in ran.items()}
        print(json.dumps(where), file=sys.stderr)  # shown with -rA / on failure
        # Every shard task left its record (the state API dropped none), each on one of the two nodes.
        assert len(ran["shard"]) >= len(shards) and set(ran["shard"]) <= set(nodes.values())
        assert len(ran["train workers"]) == 2 and len(ran["evaluate actors"]) == 2
        for stage, counts in where.items():
            assert all(counts.values()), f"{stage} did not run on both nodes: {where}"


@pytest.mark.slow
def test_tune_trials_land_on_both_nodes(tmp_path, ray_token_file):
    """Four one-worker trials, two at a time (the cluster's 2 CPUs): each node runs trials, as trials.parquet's
    node column (the node of each trial's rank 0) shows."""
    workspace = tmp_path / "ws"
    search = [
        *TINY,
        "train.cpus_per_worker=1",
        "tune.num_trials=4",
        "tune.max_epochs=2",
        "tune.grace_period=2",  # no trial stops early: every trial runs its workers to the end
        "tune.num_workers=1",
        "tune.space={train.lr: {loguniform: [1.0e-3, 1.0e-2]}}",
    ]
    with two_node_cluster(ray_token_file) as (address, env, nodes):
        args = ["--workspace", str(workspace), "--stages", "prepare,shard,anchors,tune", "--no-mlflow"]
        submit(address, env, f"yolov2-tune-{uuid.uuid4().hex[:8]}", [*args, *set_args(search)])
    (trials_file,) = workspace.glob("tune/*/trials.parquet")
    trials = pq.read_table(trials_file).to_pylist()
    assert len(trials) == 4 and all(t["status"] != "failed" for t in trials), trials
    on = {name: sum(t["node"] == node for t in trials) for name, node in nodes.items()}
    print(json.dumps(on), file=sys.stderr)
    assert all(on.values()) and sum(on.values()) == 4, on
