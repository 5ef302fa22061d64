"""Does pretraining the backbone on object crops help the detector? Detection training from scratch against
detection training started from the pretrain stage's backbone (low resolution only, then low plus high
resolution), with the same detection budget, data and seed; one JSON object out.

Input: the demo's generated shapes (``--images`` train images at 320x240, its 60 val images), the demo's
model (tiny YOLOv2 at half width) and detection recipe (AdamW, cosine) for ``--epochs`` epochs, validated every
epoch (val VOC07 mAP@0.5). The pretrain stage trains on object crops of the same training boxes, Darknet's
recipe scaled down: ``--low-epochs`` at 160 (half the detector's 320, as 224 is about half of 416), then
``--high-epochs`` at 320. Reported: each run's val mAP curve and final value, and the pretrain stage's val top-1.

    python benchmarks/pretrain.py [--images 400] [--epochs 8] [--low-epochs 10] [--high-epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ray  # noqa: E402
from machine import machine_facts  # noqa: E402

from pipelines import anchors, prepare, ray_auth, shard  # noqa: E402
from pipelines.config import PipelineConfig, load_config  # noqa: E402
from pipelines.dag import StageResult, run_stage  # noqa: E402
from pipelines.pretrain import stage as pretrain  # noqa: E402
from pipelines.train import driver as train  # noqa: E402
from pipelines.workspace import Workspace  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def config(args: argparse.Namespace, extra: list[str]) -> PipelineConfig:
    overrides = [
        f"data.synthetic.num_train={args.images}",
        f"train.epochs={args.epochs}",
        "train.val_every=1",
        "train.warmup=25",
        "train.register_name=null",
        "pretrain.source=crops",
        "pretrain.batch_size=32",
        "pretrain.low.lr=0.02",  # Darknet's 0.1 is for batches of 128; these are 64 (2 workers x 32)
        "pretrain.low.burn_in=50",
        "pretrain.low.size=160",
        "pretrain.low.min_crop=128",
        "pretrain.low.max_crop=224",
        f"pretrain.low.epochs={args.low_epochs}",
        "pretrain.high.size=320",
        "pretrain.high.min_crop=320",
        "pretrain.high.max_crop=360",
        "pretrain.high.lr=0.0002",
        *extra,
    ]
    return load_config(REPO / "configs/demo.yaml", overrides)


def curve(workspace: Workspace, result: StageResult) -> list[float]:
    table = workspace.read_parquet(result.output_dir, "results.parquet")
    return [round(v, 4) for v in table.column("val_map50_voc07").to_pylist()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400, help="generated training images")
    parser.add_argument("--epochs", type=int, default=8, help="detection epochs of every run (the same budget)")
    parser.add_argument("--low-epochs", type=int, default=10, help="pretrain epochs at low resolution")
    parser.add_argument("--high-epochs", type=int, default=2, help="pretrain epochs at high resolution")
    args = parser.parse_args()
    ray_auth.configure(starts_local=True)
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    report: dict = {"benchmark": "pretrain", "train_images": args.images, "detection_epochs": args.epochs}
    with tempfile.TemporaryDirectory() as folder:
        workspace = Workspace(folder)
        cfg = config(args, [])
        prepared = run_stage(prepare.SPEC, cfg, workspace, tracking_enabled=False)
        sharded = run_stage(shard.SPEC, cfg, workspace, upstream={"prepare": prepared}, tracking_enabled=False)
        anchored = run_stage(anchors.SPEC, cfg, workspace, upstream={"shard": sharded}, tracking_enabled=False)
        upstream = {"shard": sharded, "anchors": anchored}
        runs = {
            "scratch": [],
            "low": ["train.init_from=pretrain", "pretrain.high.epochs=0"],
            "low_high": ["train.init_from=pretrain", f"pretrain.high.epochs={args.high_epochs}"],
        }
        for name, extra in runs.items():
            run_cfg = config(args, extra)
            inputs = dict(upstream)
            if extra:
                started = time.perf_counter()
                pretrained = run_stage(pretrain.SPEC, run_cfg, workspace, upstream=upstream, tracking_enabled=False)
                inputs["pretrain"] = pretrained
                splits = pretrained.manifest["dataset"]["splits"]
                report[f"pretrain_{name}"] = {
                    "seconds": round(time.perf_counter() - started, 1),
                    "crops": {split: counts["samples"] for split, counts in splits.items()},
                    "val": pretrained.manifest["phases"],
                }
            started = time.perf_counter()
            trained = run_stage(train.SPEC, run_cfg, workspace, upstream=inputs, tracking_enabled=False)
            values = curve(workspace, trained)
            report[f"detection_{name}"] = {
                "seconds": round(time.perf_counter() - started, 1),
                "val_map50_voc07_by_epoch": values,
                "final": values[-1],
                "best": max(values),
            }
    report.update(machine_facts(1, "auto", "torch intra-op threads per worker"))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
