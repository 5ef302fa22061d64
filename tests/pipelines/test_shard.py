"""The shard stage on real Ray: real and generated datasets in, WebDataset shards out, nothing lost.

The reference for every check is independent of the stage: the dataset readers called directly
(with full image checks) and the source image files' bytes, read back through `webdataset`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import signal
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines import prepare, shard
from pipelines.config import load_config
from pipelines.dag import fingerprint, run_stage
from pipelines.faults import NO_FAULTS, FaultPlan
from pipelines.workspace import Workspace
from yolov2.data.coco import read_coco
from yolov2.data.shards import iter_shard_samples
from yolov2.data.synthetic import SHAPE_CLASSES
from yolov2.data.voc import VOC_CLASSES, read_voc
from yolov2.errors import DatasetError
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
    assert result.manifest["class_names"] == list(SHAPE_CLASSES)  # the generator's names, in its order
    assert result.manifest["class_names_source"] == "generator"
    assert "carved_from" not in result.manifest["splits"]["val"]
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


def _hash_ranked(ids: list[str], k: int, seed: int) -> set[str]:
    """The val carve-out's rule, written out: the k ids of smallest sha256("<seed>:<id>")."""
    return set(sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())[:k])


def test_raccoon_auto_class_names_and_a_carved_val_split(ray_local, tmp_path, shared_data, caplog):
    """The new user's config: a real VOC folder, no class names, no val split of its own."""
    root = shared_data / "raccoon"
    overrides = ["data.kind=voc", f"data.root={root}", "data.splits={train: [train], test: [test]}"]
    with caplog.at_level("INFO", logger="pipelines.shard"):
        _, ws, result = _run(tmp_path, [*overrides, "data.val_fraction=0.15", "data.val_seed=0"])
    assert "class names (auto, from 160 train annotations): raccoon" in caplog.text
    manifest = result.manifest
    assert manifest["class_names"] == ["raccoon"] and manifest["class_names_source"] == "annotations"
    splits = manifest["splits"]
    assert list(splits) == ["train", "val", "test"]
    assert sum(s["boxes"] for s in splits.values()) == 217  # every box of the dataset (README), none rejected
    assert all(s["boxes"] > 0 and s["rejected_boxes"] == 0 for s in splits.values())
    assert {k: splits["val"][k] for k in ("carved_from", "fraction", "seed")} == {
        "carved_from": "train",
        "fraction": 0.15,
        "seed": 0,
    }
    train_ids = (root / "ImageSets" / "Main" / "train.txt").read_text().split()
    val_ids = _hash_ranked(train_ids, 24, 0)  # round(0.15 * 160)
    records, _ = read_voc(root, "train", class_names=["raccoon"])
    expected_val = [dataclasses.replace(r, split="val") for r in records if r.image_id in val_ids]
    _assert_shards_match(ws, result, "val", expected_val)
    _assert_shards_match(ws, result, "train", [r for r in records if r.image_id not in val_ids])
    folder = ws.local_path(result.output_dir)
    for split in ("train", "val", "test"):
        index = pq.read_table(folder / f"{split}-index.parquet")
        assert json.loads(index.schema.metadata[b"class_names"]) == ["raccoon"]
        assert set(index.column("split").to_pylist()) == {split}
    assert (splits["train"]["images"], splits["val"]["images"], splits["test"]["images"]) == (136, 24, 40)


def test_raccoon_with_the_voc_names_stops_before_any_shard_naming_raccoon(tmp_path, shared_data):
    """The issue's run: the 20 VOC names on a 1-class folder. No Ray needed: the names scan stops it first."""
    overrides = [
        "data.kind=voc",
        f"data.root={shared_data / 'raccoon'}",
        "data.splits={train: [train], test: [test]}",
        f"data.class_names=[{', '.join(VOC_CLASSES)}]",
    ]
    with pytest.raises(DatasetError) as e:
        _run(tmp_path, overrides)
    text = str(e.value)
    assert "217 of the 217 boxes (100%) have a class that is not in data.class_names" in text
    assert "'raccoon' (217)" in text and "data.class_names: auto" in text and "data.skip_unknown_classes: true" in text
    cfg = load_config(None, [f"workspace={tmp_path / 'ws'}", *overrides])
    output = Workspace.open(cfg.workspace).local_path(f"shard/{fingerprint(cfg, shard.SPEC)}")
    assert output.is_dir() and not list(output.iterdir())  # the stage began, and wrote nothing


def _tiny_voc(root: Path, objects: dict[str, list[str]], splits: dict[str, list[str]]) -> Path:
    """A VOC folder written here: 64x48 JPEGs, one 20x20 box per listed class name."""
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for image_id, names in objects.items():
        Image.new("RGB", (64, 48), (90, 120, 30)).save(root / "JPEGImages" / f"{image_id}.jpg", "JPEG")
        boxes = "".join(
            f"<object><name>{n}</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>24</xmax><ymax>24</ymax></bndbox>"
            "</object>"
            for n in names
        )
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><size><width>64</width><height>48</height></size>{boxes}</annotation>"
        )
    for split, ids in splits.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def test_skip_unknown_classes_goes_on_and_a_split_left_without_boxes_is_an_error(ray_local, tmp_path):
    root = _tiny_voc(
        tmp_path / "voc",
        {"a": ["cat", "cat", "dog"], "b": ["cat"], "c": ["cat"], "d": ["cat"]},
        {"train": ["a", "b"], "test": ["c", "d"]},
    )
    mine = ["data.kind=voc", f"data.root={root}", "data.class_names=[dog]"]
    stop = r"5 of the 6 boxes \(83%\) .*\(dog\): 'cat' \(5\)\. Set data.class_names: auto"
    with pytest.raises(DatasetError, match=stop):
        _run(tmp_path, [*mine, "data.splits={train: [train], test: [test]}"])

    _, ws, result = _run(tmp_path, [*mine, "data.splits={train: [train]}", "data.skip_unknown_classes=true"])
    train = result.manifest["splits"]["train"]
    assert (train["images"], train["boxes"], train["rejected_boxes"]) == (2, 1, 3)
    assert result.manifest["class_names_source"] == "config"
    rejects = pq.read_table(ws.local_path(result.output_dir, "rejects.parquet")).to_pylist()
    assert [r["unknown_class"] for r in rejects] == ["cat"] * 3

    with pytest.raises(DatasetError) as e:
        _run(tmp_path, [*mine, "data.splits={train: [train], test: [test]}", "data.skip_unknown_classes=true"])
    assert str(e.value).startswith(
        "split test: none of its 2 images has a box left; 2 boxes were rejected, most often: unknown class 'cat' (2). "
        "The class names are the likely cause (class names (from data.class_names): dog)"
    )


def test_yolo_ids_beyond_the_given_names_stop_the_stage_from_its_rejects(ray_local, tmp_path):
    root = tmp_path / "yolo"
    (root / "labels" / "train").mkdir(parents=True)
    (root / "images" / "train").mkdir(parents=True)
    (root / "classes.txt").write_text("a\nb\nc\n")
    for stem, ids in {"x": [0, 2, 2], "y": [1, 2]}.items():
        Image.new("RGB", (64, 48)).save(root / "images" / "train" / f"{stem}.jpg", "JPEG")
        (root / "labels" / "train" / f"{stem}.txt").write_text("".join(f"{i} 0.5 0.5 0.2 0.2\n" for i in ids))
    base = ["data.kind=yolo", f"data.root={root}", "data.splits={train: [train]}"]
    with pytest.raises(DatasetError, match=r"4 of the 5 boxes \(80%\) .*\(a\): '2' \(3\), '1' \(1\)\."):
        _run(tmp_path, [*base, "data.class_names=[a]"])
    _, _, result = _run(tmp_path, base)  # auto: classes.txt
    assert result.manifest["class_names"] == ["a", "b", "c"] and result.manifest["splits"]["train"]["boxes"] == 5
    assert result.manifest["class_names_source"] == "names file"


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
