"""Faults across stages, on real Ray and real MLflow: disk errors while a stage writes, and the driver
(`pipelines/full.py`) killed mid-run then rerun.

Disk errors use a small tmpfs as the workspace (we run as root, so a read-only chmod stops nothing):
the tests skip, saying why, where `mount` is not permitted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from driver_kill import kill_driver_when
from pipelines import full, prepare, shard
from pipelines.config import load_config
from pipelines.dag import MANIFEST, run_stage
from pipelines.workspace import Workspace, WorkspaceWriteError
from tiny_pipeline import TINY, set_args

REPO = Path(__file__).resolve().parents[2]

SHARD_OVERRIDES = [
    "data.synthetic.num_train=20",
    "data.synthetic.num_val=4",
    "data.synthetic.num_test=4",
    "shard.max_count=8",
]
PAGE = 4096  # tmpfs counts whole pages per file


@contextlib.contextmanager
def tmpfs(mount_point: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted at ``mount_point`` for the block; skips where mounting is refused."""
    mount_point.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except FileNotFoundError:
        pytest.skip("no `mount` command: cannot make a small filesystem to fill")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def remount(mount_point: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mount_point)], check=True, timeout=30)


def _prepared(tmp_path: Path):
    """Config and the prepared (generated) dataset, on the ordinary disk."""
    cfg = load_config(None, [f"workspace={tmp_path / 'ws'}", *SHARD_OVERRIDES])
    big = Workspace.open(cfg.workspace)
    return cfg, big, run_stage(prepare.SPEC, cfg, big, tracking_enabled=False)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def _no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob(".tmp-*")]


def _assert_failed_cleanly(info: pytest.ExceptionInfo, small: Workspace, output_dir: str, problem: str) -> None:
    message = str(info.value)
    assert problem in message and str(small.local_path(output_dir)) in message, message
    assert "Traceback" not in message and "ray::" not in message  # not Ray's wrapped remote traceback
    assert not small.exists(output_dir, MANIFEST)
    assert _no_temp_files(small.local_path())


@pytest.mark.fault
def test_disk_full_while_writing_shards_fails_clearly_and_a_rerun_with_space_succeeds(ray_local, tmp_path):
    cfg, big, prepared = _prepared(tmp_path)
    clean = run_stage(shard.SPEC, cfg, big, upstream={"prepare": prepared}, tracking_enabled=False)
    with tmpfs(tmp_path / "small", 64 * 1024) as mount_point:  # room for a fraction of one shard
        small = Workspace.open(mount_point)
        with pytest.raises(WorkspaceWriteError) as info:
            run_stage(shard.SPEC, cfg, small, upstream={"prepare": prepared}, tracking_enabled=False)
        _assert_failed_cleanly(info, small, clean.output_dir, "No space left on device")
        assert ".tar" in str(info.value)

        remount(mount_point, "size=16m")  # space freed: the same command now completes
        rerun = run_stage(shard.SPEC, cfg, small, upstream={"prepare": prepared}, tracking_enabled=False)
        assert not rerun.cached and rerun.output_dir == clean.output_dir
        assert _digests(small.local_path(rerun.output_dir)) == _digests(big.local_path(clean.output_dir))
        assert len(_digests(small.local_path(rerun.output_dir))) == 5
        assert _no_temp_files(mount_point)


@pytest.mark.fault
def test_disk_full_at_the_manifest_leaves_the_stage_not_done(ray_local, tmp_path):
    """The disk has room for every shard and index but not the manifest: the stage fails on manifest.json
    and is not taken as done; the next run redoes it."""
    cfg, big, prepared = _prepared(tmp_path)
    clean = run_stage(shard.SPEC, cfg, big, upstream={"prepare": prepared}, tracking_enabled=False)
    outputs = [p for p in big.local_path(clean.output_dir).iterdir() if p.name != MANIFEST]
    room = sum(-(-p.stat().st_size // PAGE) * PAGE for p in outputs)
    with tmpfs(tmp_path / "small", room) as mount_point:
        small = Workspace.open(mount_point)
        with pytest.raises(WorkspaceWriteError) as info:
            run_stage(shard.SPEC, cfg, small, upstream={"prepare": prepared}, tracking_enabled=False)
        _assert_failed_cleanly(info, small, clean.output_dir, "No space left on device")
        assert str(small.local_path(clean.output_dir, MANIFEST)) in str(info.value)
        assert sorted(p.name for p in small.local_path(clean.output_dir).iterdir()) == sorted(p.name for p in outputs)

        remount(mount_point, f"size={room + 4 * PAGE}")
        rerun = run_stage(shard.SPEC, cfg, small, upstream={"prepare": prepared}, tracking_enabled=False)
        assert not rerun.cached and small.exists(rerun.output_dir, MANIFEST)
        assert _digests(small.local_path(rerun.output_dir)) == _digests(big.local_path(clean.output_dir))


@pytest.mark.fault
def test_read_only_workspace_fails_clearly_before_any_work(ray_local, tmp_path):
    cfg, _, prepared = _prepared(tmp_path)
    with tmpfs(tmp_path / "small", 1024 * 1024) as mount_point:
        remount(mount_point, "ro")
        small = Workspace(str(mount_point))
        with pytest.raises(OSError, match="Read-only file system") as info:
            run_stage(shard.SPEC, cfg, small, upstream={"prepare": prepared}, tracking_enabled=False)
        assert str(mount_point) in str(info.value)
        assert list(mount_point.iterdir()) == []


def _runs(tracking_uri: str, experiment: str) -> dict[str, list]:
    """The experiment's runs by run name, oldest first, read straight from the MLflow store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    by_name: dict[str, list] = {}
    for run in sorted(client.search_runs([experiment_id], max_results=1000), key=lambda r: r.info.start_time):
        by_name.setdefault(run.info.run_name, []).append(run)
    return by_name


@pytest.mark.slow
@pytest.mark.fault
def test_driver_killed_mid_train_then_rerun_caches_done_stages_and_restarts_train(ray_local, tmp_path):
    """`full.py` SIGKILLed once training has written a checkpoint, then run again with the same command.

    What "no duplicate MLflow stage runs" means here: after the rerun every stage has exactly one FINISHED
    run; the cached stages get no new run (the rerun's parent links to the first ones); the killed driver's
    train and pipeline runs, which MLflow itself would leave RUNNING forever, are marked KILLED by the rerun.
    """
    ws = tmp_path / "ws"
    stages = ["prepare", "shard", "anchors", "train"]
    args = [
        "--config",
        str(REPO / "configs/demo.yaml"),
        "--workspace",
        str(ws),
        "--stages",
        ",".join(stages),
        *set_args([*TINY, "train.epochs=4", "mlflow.experiment=driver-kill"]),
    ]
    log = tmp_path / "driver.log"
    # ray.address=local: a Ray instance of its own, never a cluster some other process started on this machine
    with open(log, "w") as out:
        command = [sys.executable, str(REPO / "pipelines/full.py"), *args, "--set", "ray.address=local"]
        driver = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    kill_driver_when(lambda: any(ws.glob("train/*/ray/**/state.pt")), driver, log, timeout=480)

    done = {s: next(ws.glob(f"{s}/*/{MANIFEST}"), None) for s in stages}
    assert done["train"] is None and all(done[s] for s in ["prepare", "shard", "anchors"])
    train_dir = next(ws.glob("train/*"))
    killed_checkpoints = {p.parent.name for p in train_dir.glob("ray/**/state.pt")}
    assert killed_checkpoints
    # as if the kill had hit the manifest write itself: its temp file must never count as the manifest
    (train_dir / ".tmp-0123456789abcdef-manifest.json").write_text('{"stage": "train", "steps"')
    tracking_uri = f"sqlite:///{ws / 'mlflow.db'}"
    before = _runs(tracking_uri, "driver-kill")
    assert {n: [r.info.status for r in runs] for n, runs in before.items()} == {
        "pipeline": ["RUNNING"],
        "prepare": ["FINISHED"],
        "shard": ["FINISHED"],
        "anchors": ["FINISHED"],
        "train": ["RUNNING"],
    }

    assert full.main(args) == 0  # the same command again
    summary = json.loads((ws / "summary.json").read_text())
    assert {s: summary["stages"][s]["status"] for s in stages} == {
        "prepare": "cached",
        "shard": "cached",
        "anchors": "cached",
        "train": "done",
    }
    manifest = json.loads((train_dir / MANIFEST).read_text())
    assert manifest["epochs"] == 4 and manifest["resumed"] is False  # restarted from step 0, ran to the end
    assert not killed_checkpoints & {p.parent.name for p in train_dir.glob("ray/**/state.pt")}
    assert not list(ws.glob("*/*/**/.tmp-*"))

    after = _runs(tracking_uri, "driver-kill")
    assert {n: [r.info.status for r in runs] for n, runs in after.items()} == {
        "pipeline": ["KILLED", "FINISHED"],
        "prepare": ["FINISHED"],
        "shard": ["FINISHED"],
        "anchors": ["FINISHED"],
        "train": ["KILLED", "FINISHED"],
    }
    assert after["train"][0].info.run_id == before["train"][0].info.run_id
    assert after["pipeline"][0].info.run_id == before["pipeline"][0].info.run_id
    assert manifest["mlflow_run_id"] == after["train"][1].info.run_id
    assert after["train"][1].data.tags["mlflow.parentRunId"] == summary["mlflow_parent_run_id"]
    rerun_tags = after["pipeline"][1].data.tags
    for stage in ["prepare", "shard", "anchors"]:
        assert rerun_tags[f"stage.{stage}.cached_run_id"] == before[stage][0].info.run_id
