"""The shard stage on real Ray: real and generated datasets in, WebDataset shards out, nothing lost.

The reference for every check is independent of the stage: the dataset readers called directly
(with full image checks) and the source image files' bytes, read back through `webdataset`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import signal
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines import prepare, shard
from pipelines.config import load_config
from pipelines.dag import run_stage
from pipelines.faults import NO_FAULTS, FaultPlan
from pipelines.workspace import Workspace
from yolov2.data.coco import read_coco
from yolov2.data.shards import iter_shard_samples
from yolov2.data.voc import read_voc
from yolov2.progress import Progress


def _run(tmp_path: Path, overrides: list[str], force: bool = False, faults: FaultPlan = NO_FAULTS):
    cfg = load_config(None, [f"workspace={tmp_path / 'ws'}", *overrides])
    ws = Workspace.open(cfg.workspace)
    prepared = run_stage(prepare.SPEC, cfg, ws, tracking_enabled=False)
    result = run_stage(
        shard.SPEC, cfg, ws, upstream={"prepare": prepared}, force=force, tracking_enabled=False, faults=faults
    )
    return cfg, ws, result


def _shard_digests(ws: Workspace, result) -> dict[str, str]:
    folder = ws.local_path(result.output_dir)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def _assert_shards_match(ws: Workspace, result, split: str, expected_records) -> None:
    """Every expected record is in the shards, in order, with identical record and image bytes."""
    folder = ws.local_path(result.output_dir)
    urls = [str(folder / name) for name in result.manifest["splits"][split]["shards"]]
    samples = list(iter_shard_samples(urls))
    assert [rec.image_id for _, _, rec in samples] == [r.image_id for r in expected_records]
    for (_key, image_bytes, rec), expected in zip(samples, expected_records):
        assert rec.to_dict() == expected.to_dict()
        assert image_bytes == Path(expected.path).read_bytes()
    index = pq.read_table(folder / f"{split}-index.parquet")
    assert index.column("image_id").to_pylist() == [r.image_id for r in expected_records]
    assert index.column("key").to_pylist() == [k for k, _, _ in samples]


def test_generated_dataset_round_trip_cache_and_force(ray_local, tmp_path, monkeypatch, capsys):
    overrides = [
        "data.synthetic.num_train=24",
        "data.synthetic.num_val=6",
        "data.synthetic.num_test=6",
        "shard.max_count=10",
    ]
    monkeypatch.setattr(shard, "Progress", functools.partial(Progress, interval=0))  # a line per finished shard
    cfg, ws, result = _run(tmp_path, overrides)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[shard]")]
    assert lines[0] == "[shard] 0/36 images (0%) elapsed 0:00:00"
    assert any(
        re.fullmatch(
            r"\[shard\] \d+/36 images \(\d+%\) [\d.]+ images/s, elapsed 0:00:\d\d, "
            r"ETA 0:\d\d:\d\d",
            line,
        )
        for line in lines
    ), lines
    assert lines[-1].startswith("[shard] 36/36 images (100%)")
    root = result.manifest and run_stage(prepare.SPEC, cfg, ws, tracking_enabled=False).manifest["root"]
    for split, n in [("train", 24), ("val", 6), ("test", 6)]:
        records, rejects = read_voc(root, split, class_names=result.manifest["class_names"])
        assert len(records) == n and rejects == []
        _assert_shards_match(ws, result, split, records)
    assert result.manifest["splits"]["train"]["shards"] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    digests = _shard_digests(ws, result)

    _, _, cached = _run(tmp_path, overrides)
    assert cached.cached and cached.fingerprint == result.fingerprint
    _, _, forced = _run(tmp_path, overrides, force=True)
    assert not forced.cached
    assert _shard_digests(ws, forced) == digests  # byte-identical rewrite


def test_voc100_every_record_and_byte(ray_local, tmp_path, shared_data):
    root = shared_data / "voc100"
    _, ws, result = _run(tmp_path, ["data.kind=voc", f"data.root={root}", "data.splits={test: [test]}"])
    records, rejects = read_voc(root, "test")
    assert len(records) + sum(r.level == "image" for r in rejects) == 100
    _assert_shards_match(ws, result, "test", records)
    s = result.manifest["splits"]["test"]
    assert s["images_in"] == 100 and s["images"] + s["rejected_images"] == 100
    assert s["boxes"] == sum(r.num_boxes for r in records)


def test_raccoon_two_splits_grayscale_kept(ray_local, tmp_path, shared_data):
    root = shared_data / "raccoon"
    _, ws, result = _run(
        tmp_path,
        [
            "data.kind=voc",
            f"data.root={root}",
            "data.splits={train: [train], test: [test]}",
            "data.class_names=[raccoon]",
        ],
    )
    for split, n in [("train", 160), ("test", 40)]:
        records, rejects = read_voc(root, split, class_names=["raccoon"])
        assert len(records) + sum(r.level == "image" for r in rejects) == n
        _assert_shards_match(ws, result, split, records)
    total = sum(s["images"] for s in result.manifest["splits"].values())
    assert total == 200 - sum(s["rejected_images"] for s in result.manifest["splits"].values())


def test_coco_tiny(ray_local, tmp_path, shared_data):
    root = shared_data / "coco_tiny"
    _, ws, result = _run(
        tmp_path, ["data.kind=coco", f"data.root={root}", "data.splits={train: [train2017], val: [val2017]}"]
    )
    for split, name in [("train", "train2017"), ("val", "val2017")]:
        records, rejects = read_coco(
            root / "annotations" / f"instances_{name}.json",
            root / name,
            split,
            class_names=result.manifest["class_names"],
        )
        assert len(records) + sum(r.level == "image" for r in rejects) == 80
        _assert_shards_match(ws, result, split, records)
    assert len(result.manifest["class_names"]) == 80


def test_bad_images_are_rejected_with_reasons_and_counted(ray_local, tmp_path, shared_data):
    """A truncated JPEG and a deleted image become rejects; the count invariant holds."""
    import shutil

    root = tmp_path / "voc"
    shutil.copytree(shared_data / "voc100", root)
    ids = (root / "ImageSets" / "Main" / "test.txt").read_text().split()
    truncated = root / "JPEGImages" / f"{ids[0]}.jpg"
    truncated.write_bytes(truncated.read_bytes()[:5000])
    (root / "JPEGImages" / f"{ids[1]}.jpg").unlink()
    _, ws, result = _run(tmp_path, ["data.kind=voc", f"data.root={root}", "data.splits={test: [test]}"])
    s = result.manifest["splits"]["test"]
    assert s["images"] == 98 and s["rejected_images"] == 2 and s["images_in"] == 100
    rejects = pq.read_table(ws.local_path(result.output_dir, "rejects.parquet")).to_pylist()
    image_rejects = {r["image_id"]: r for r in rejects if r["level"] == "image"}
    assert set(image_rejects) == {ids[0], ids[1]}
    assert "truncated" in image_rejects[ids[0]]["reason"] and ids[0] in image_rejects[ids[0]]["source"]
    assert "missing" in image_rejects[ids[1]]["reason"]


FAULT_OVERRIDES = [
    "data.synthetic.num_train=20",
    "data.synthetic.num_val=4",
    "data.synthetic.num_test=4",
    "shard.max_count=8",
]  # 5 shards


def _clean_run_and_marker_dir(tmp_path: Path):
    """A clean shard run (its workspace and shard digests) and an empty folder for a fault hook's markers."""
    _, ws, clean = _run(tmp_path, FAULT_OVERRIDES)
    markers = tmp_path / "markers"
    markers.mkdir()
    return ws, _shard_digests(ws, clean), markers


@pytest.mark.fault
def test_killed_task_is_retried_and_output_identical(ray_local, tmp_path):
    ws, clean_digests, markers = _clean_run_and_marker_dir(tmp_path)
    exit_once = FaultPlan(shard_kind="exit", shard_marker_dir=str(markers))
    _, _, faulty = _run(tmp_path, FAULT_OVERRIDES, force=True, faults=exit_once)
    assert len(list(markers.iterdir())) == len(clean_digests) == 5  # every shard's first attempt died
    assert _shard_digests(ws, faulty) == clean_digests
    assert not list(ws.local_path(faulty.output_dir).glob(".tmp-*"))


def _kill_held_workers(markers: Path, stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL every Ray worker that the hold hook reports (``<shard>.pid``), once each."""
    seen: set[Path] = set()
    while not stop.is_set():
        for pid_file in sorted(set(markers.glob("*.pid")) - seen):
            seen.add(pid_file)
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        stop.wait(0.05)


def _process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"  # a zombie not yet reaped is dead too
    except FileNotFoundError:
        return True


@pytest.mark.fault
def test_worker_killed_by_signal_is_retried_and_output_identical(ray_local, tmp_path):
    """The worker process running each shard's first attempt is SIGKILLed from outside, mid-write (data
    written, temp file not yet renamed): Ray retries the task on a new worker, shards are byte-identical."""
    ws, clean_digests, markers = _clean_run_and_marker_dir(tmp_path)
    hold_once = FaultPlan(shard_kind="hold", shard_marker_dir=str(markers))
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_held_workers, args=(markers, stop, killed), daemon=True)
    killer.start()
    try:
        _, _, faulty = _run(tmp_path, FAULT_OVERRIDES, force=True, faults=hold_once)
    finally:
        stop.set()
        killer.join()
    assert len(killed) == len(set(killed)) == len(clean_digests) == 5  # one worker killed per shard
    assert os.getpid() not in killed and all(_process_gone(pid) for pid in killed)
    assert _shard_digests(ws, faulty) == clean_digests
    assert not list(ws.local_path(faulty.output_dir).glob(".tmp-*"))
