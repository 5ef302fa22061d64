"""The pretrain stage on real Ray: generated shapes on two workers with one killed mid-run, object crops of the
shard stage's boxes, an image folder with bad files, and the hand-over of the backbone to the detector."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipelines import prepare, shard, tracking
from pipelines.config import load_config
from pipelines.dag import StageContext, run_stage
from pipelines.faults import FaultPlan
from pipelines.pretrain import stage as pretrain
from pipelines.pretrain.dataset import build_dataset, read_split
from pipelines.pretrain.worker import steps_per_epoch
from pipelines.workspace import Workspace
from yolov2.data.cls_shards import encode_jpeg
from yolov2.data.images import decode_rgb
from yolov2.engine.checkpoint import load_checkpoint
from yolov2.engine.init import load_initial_weights
from yolov2.models import build_model
from yolov2.models.classifier import build_classifier

SMALL = [
    "model.name=yolov2_tiny_voc",
    "model.width_multiplier=0.25",
    "pretrain.num_workers=2",
    "pretrain.batch_size=16",
    "pretrain.low.size=64",
    "pretrain.low.min_crop=56",
    "pretrain.low.max_crop=80",
    "pretrain.low.burn_in=10",
    "pretrain.low.lr=0.01",  # Darknet's 0.1 is for batches of 128
    "pretrain.high.size=96",
    "pretrain.high.min_crop=96",
    "pretrain.high.max_crop=112",
    "pretrain.high.lr=0.005",
    "pretrain.log_every=5",
]
FAILING_STEP = 60  # in the second epoch or later (checked below), after the first epoch's checkpoint


def _cfg(tmp_path: Path, extra: list[str]):
    return load_config(None, [f"workspace={tmp_path / 'ws'}", *SMALL, *extra])


def _synthetic_cfg(tmp: Path, images: int, low_epochs: int, high_epochs: int, more: list[str] | None = None):
    """The generated shapes as the pretrain source, ``images`` of them, for that many epochs per phase."""
    extra = [
        "pretrain.source=synthetic",
        f"pretrain.synthetic_images={images}",
        f"pretrain.low.epochs={low_epochs}",
        f"pretrain.high.epochs={high_epochs}",
        "data.synthetic.image_size=[160, 120]",
        *(more or []),
    ]
    return _cfg(tmp, extra)


@pytest.fixture(scope="module")
def synthetic(ray_local, tmp_path_factory):
    """Generated shapes, 6 epochs at 64 then 1 at 96 on two workers; rank 1 is SIGKILLed once mid-run."""
    tmp = tmp_path_factory.mktemp("pretrain")
    markers = tmp / "markers"
    markers.mkdir()
    cfg = _synthetic_cfg(tmp, images=400, low_epochs=6, high_epochs=1)
    ws = Workspace.open(cfg.workspace)
    fault = FaultPlan(train_step=FAILING_STEP, train_rank=1, train_kind="sigkill", train_marker_dir=str(markers))
    tracking.setup_mlflow(None, "pretrain-test", ws)
    with mlflow.start_run(run_name="pipeline"):
        result = run_stage(pretrain.SPEC, cfg, ws, faults=fault)
    return cfg, ws, result, markers


def test_the_classifier_learns_the_shapes_well_above_chance(synthetic):
    _, ws, result, _ = synthetic
    rows = pq.read_table(ws.local_path(result.output_dir, "results.parquet")).to_pylist()
    assert [(r["epoch"], r["phase"], r["size"]) for r in rows] == [(e, "low", 64) for e in range(1, 7)] + [
        (7, "high", 96)
    ]
    chance = 1 / len(result.manifest["dataset"]["class_names"])
    # seen: 0.53-0.57 after the low phase, 0.43 after one high epoch (the larger size is new to the network)
    assert result.manifest["phases"]["low"]["val_top1"] > 2 * chance, rows
    assert result.manifest["phases"]["high"]["val_top1"] > 1.5 * chance, rows
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert "val_top5" not in rows[0]  # five classes: top-5 is always right and is left out


def test_mlflow_has_each_phases_metrics_and_the_figures(synthetic):
    _, ws, result, _ = synthetic
    client = mlflow.tracking.MlflowClient(f"sqlite:///{ws.local_path('mlflow.db')}")
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "pretrain"
    low = {m.step: m.value for m in client.get_metric_history(result.run_id, "low_val_top1")}
    high = client.get_metric_history(result.run_id, "high_val_top1")
    per_epoch = steps_per_epoch(result.manifest["dataset"], 16, 2)
    assert sorted(low) == [e * per_epoch for e in range(1, 7)] and len({m.step for m in high}) == 1
    assert low[6 * per_epoch] == pytest.approx(result.manifest["phases"]["low"]["val_top1"])
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"curves.png", "confusion.png", "samples.png", "results.parquet", "backbone.weights"} <= artifacts


def test_a_killed_worker_resumes_from_the_last_checkpoint(synthetic):
    _, _, result, markers = synthetic
    assert (markers / f"train-step-{FAILING_STEP}.failed").read_text().startswith("rank 1 ")  # the kill happened
    per_epoch = steps_per_epoch(result.manifest["dataset"], 16, 2)
    assert per_epoch <= FAILING_STEP < 6 * per_epoch  # after the first checkpoint, inside the low phase
    assert result.manifest["epochs"] == 7


def test_a_stopped_run_resumes_from_its_checkpoint(ray_local, tmp_path):
    """No retries left: the run stops with its first epoch's checkpoint; ``--resume`` continues from there."""
    markers = tmp_path / "markers"
    markers.mkdir()
    cfg = _synthetic_cfg(
        tmp_path, images=80, low_epochs=3, high_epochs=0, more=["pretrain.num_workers=1", "pretrain.max_failures=0"]
    )
    ws = Workspace.open(cfg.workspace)
    fault = FaultPlan(train_step=25, train_marker_dir=str(markers))
    with pytest.raises(Exception, match="injected training failure"):
        run_stage(pretrain.SPEC, cfg, ws, tracking_enabled=False, faults=fault)
    kept = [load_checkpoint(p)["state"] for p in ws.local_path("pretrain").glob("*/ray/**/state.pt")]
    assert kept and max(s["epoch"] for s in kept) == 1  # the failure came in the second epoch
    resumed = run_stage(pretrain.SPEC, cfg, ws, tracking_enabled=False, flags={"resume": True}, faults=fault)
    assert resumed.manifest["resumed"] is True and resumed.manifest["epochs"] == 3
    rows = pq.read_table(ws.local_path(resumed.output_dir, "results.parquet")).to_pylist()
    assert [r["epoch"] for r in rows] == [1, 2, 3]  # epoch 1's row came back with its checkpoint


def test_the_dataset_is_counted_split_by_class_and_readable(synthetic):
    _, ws, result, _ = synthetic
    dataset = result.manifest["dataset"]
    rejects = pq.read_table(ws.local_path(result.output_dir, "rejects.parquet")).to_pylist()
    samples = {split: list(read_split(ws, result.output_dir, dataset, split)) for split in ("train", "val")}
    assert (
        dataset["inputs"]
        == len(samples["train"]) + len(samples["val"]) + len(rejects)
        == (dataset["splits"]["train"]["samples"] + dataset["splits"]["val"]["samples"] + dataset["rejected"])
    )
    for split in ("train", "val"):
        counts = np.bincount([label for _, _, label in samples[split]], minlength=5)
        assert dict(zip(dataset["class_names"], counts.tolist())) == dataset["splits"][split]["per_class"]
    val, train = dataset["splits"]["val"]["per_class"], dataset["splits"]["train"]["per_class"]
    for name in val:  # stratified: about a tenth of each class
        assert abs(val[name] - 0.1 * (val[name] + train[name])) <= 1
    assert not {k for k, _, _ in samples["train"]} & {k for k, _, _ in samples["val"]}
    assert all(r["level"] == "box" for r in rejects)


def test_the_backbone_starts_the_detector(synthetic):
    cfg, ws, result, _ = synthetic
    folder = ws.local_path(result.output_dir)
    classifier = build_classifier("yolov2_tiny_voc", 5, 0.25)
    classifier.load_state_dict(load_checkpoint(folder / "classifier.pt")["model"])
    layers = result.manifest["backbone_layers"]
    values = sum(c.weight.numel() + (bn.weight.numel() * 4 if bn is not None else c.bias.numel())
                 for c, bn in list(classifier.darknet_layers())[:layers])  # fmt: skip
    assert (folder / "backbone.weights").stat().st_size == 20 + 4 * values

    tuned = pretrain.pretrained_config(load_config(None, [*SMALL, "train.init_from=pretrain"]), ws, result)
    assert (tuned.train.init_weights, tuned.train.init_layers) == (str(folder / "backbone.weights"), layers)
    detector = build_model("yolov2_tiny_voc", 20, width_multiplier=0.25)
    untouched = {k: v.clone() for k, v in detector.state_dict().items() if not k.startswith("body.")}
    load_initial_weights(detector, tuned.train.init_weights, tuned.train.init_layers)
    expected = classifier.backbone.state_dict()
    loaded = {k: v for k, v in detector.backbone.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert loaded and all(torch.equal(v, expected[k]) for k, v in loaded.items())  # Darknet keeps no BN step count
    assert all(torch.equal(v, detector.state_dict()[k]) for k, v in untouched.items())
    plain = build_model("yolov2_tiny_voc", 20, width_multiplier=0.25)
    plain.backbone.load_state_dict(torch.load(folder / "backbone.pt", weights_only=True))
    assert all(torch.equal(v, classifier.backbone.state_dict()[k]) for k, v in plain.backbone.state_dict().items())
    for figure in ("curves.png", "confusion.png", "samples.png"):
        assert (folder / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_crops_of_the_shard_stages_boxes(ray_local, tmp_path):
    cfg = _cfg(
        tmp_path,
        [
            "pretrain.source=crops",
            "data.synthetic.num_train=24",
            "data.synthetic.num_val=4",
            "data.synthetic.num_test=2",
            "data.synthetic.image_size=[128, 96]",
            "shard.max_count=10",
        ],
    )
    ws = Workspace.open(cfg.workspace)
    prepared = run_stage(prepare.SPEC, cfg, ws, tracking_enabled=False)
    sharded = run_stage(shard.SPEC, cfg, ws, upstream={"prepare": prepared}, tracking_enabled=False)
    ctx = StageContext("pretrain", cfg, ws, "pretrain/crops", upstream={"shard": sharded}, tracking_enabled=False)
    dataset = build_dataset(ctx)  # the data alone: the synthetic test trains
    index = ws.read_parquet(sharded.output_dir, sharded.manifest["splits"]["train"]["index"]).to_pylist()
    boxes = sum(len(r["boxes"]) for r in index)
    written = dataset["splits"]["train"]["samples"] + dataset["splits"]["val"]["samples"]
    assert dataset["inputs"] == boxes == written + dataset["rejected"]
    assert len(dataset["splits"]["train"]["shards"]) == len(sharded.manifest["splits"]["train"]["shards"])
    # a crop holds its box with the margin: the crop's size against the box's, for every crop of the first image
    first = index[0]
    crops = {k: decode_rgb(jpg).shape for k, jpg, _ in read_split(ws, ctx.output_dir, dataset, "train")}
    crops.update({k: decode_rgb(jpg).shape for k, jpg, _ in read_split(ws, ctx.output_dir, dataset, "val")})
    for i, box in enumerate(first["boxes"]):
        shape = crops.get(f"{first['image_id']}_b{i:04d}")
        if shape is None:
            continue  # rejected (too small)
        w, h = box["x2"] - box["x1"], box["y2"] - box["y1"]
        assert shape[1] <= min(first["width"], int(np.ceil(w * 1.3)) + 2) and shape[0] <= int(np.ceil(h * 1.3)) + 2
        assert shape[1] >= min(w, first["width"]) - 1 and shape[0] >= min(h, first["height"]) - 1


def test_an_image_folder_with_bad_files_gives_named_rejects(ray_local, tmp_path):
    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(12):
            image = np.clip(rng.normal(80 + 90 * c, 20, (40, 48, 3)), 0, 255).astype(np.uint8)
            (root / name / f"{i:02d}.jpg").write_bytes(encode_jpeg(image))
    (root / "cat" / "empty.jpg").write_bytes(b"")
    (root / "dog" / "notes.jpg").write_text("not an image")
    (root / "dog" / "cut.jpg").write_bytes(encode_jpeg(np.zeros((40, 40, 3), np.uint8))[:300])
    cfg = _cfg(
        tmp_path,
        [
            "pretrain.source=imagefolder",
            f"pretrain.root={root}",
            "pretrain.val_fraction=0.25",
        ],
    )
    ws = Workspace.open(cfg.workspace)
    ctx = StageContext("pretrain", cfg, ws, "pretrain/folder", tracking_enabled=False)
    dataset = build_dataset(ctx)
    assert dataset["class_names"] == ["cat", "dog"]
    assert dataset["splits"]["val"]["per_class"] == {"cat": 3, "dog": 3}
    assert dataset["splits"]["train"]["per_class"] == {"cat": 9, "dog": 9}
    rejects = pq.read_table(ws.local_path(ctx.output_dir, "rejects.parquet")).to_pylist()
    assert sorted(Path(r["source"]).name for r in rejects) == ["cut.jpg", "empty.jpg", "notes.jpg"]
    assert all(r["reason"] for r in rejects)
    assert dataset["inputs"] == 24 + 3
