"""Training's validation on 2 ranks (each predicts its share, rank 0 scores the whole) against rank 0 alone
(the others waiting), on the same images and model; one JSON object out.

Input: ``--images`` generated images (``yolov2.data.synthetic.generate_image``, seed 3, 320x240, up to 8 shapes)
in shards of 16, the demo's model (yolov2-tiny-voc at half width, seeded random weights) at ``--size``, the
validation predictor settings (``pipelines.train.job.validation_predict``), batch ``--batch``, the precision
``auto`` picks on this CPU.

What is timed, per validation: :func:`pipelines.train.validation.gather_predictions` (rank 0's buffers to every
rank, each rank's share predicted, the parts gathered to rank 0 and merged) plus
:func:`yolov2.evaluation.validation_metrics` on rank 0 (VOC07, VOC12, COCO), from a barrier to rank 0's metrics,
as the training loop runs it:

* ``rank0_alone`` (the baseline): one gloo process (world 1) predicts every image, as rank 0 did before;
* ``two_ranks``: two gloo processes, one share each.

Each rank has one torch thread (``train.cpus_per_worker: 1``), so two ranks use two cores. After one untimed
warm-up validation, ``--repeats`` are timed; the figures are medians (and minima) of rank 0's wall time, and
each rank's process CPU time (``cpu_s``; ``metrics_cpu_s``: rank 0's share of it spent scoring). ``speedup`` =
baseline / two ranks by wall time, both measured in this run; ``speedup_cpu``: by CPU time on the critical
path (the busier rank), what the wall time would be with a core per rank to itself: on a shared machine the
wall times follow its load (``load_avg_1_5_15`` before and after), CPU times far less. ``identical``: the two
give the same metrics, exactly. The JSON states the CPU's kind (``cpu_capability``, ``native_bf16``).

    python benchmarks/validation.py [--images 64] [--size 320] [--batch 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import cv2
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import auto_precision, machine_facts  # noqa: E402

from yolov2.data.shards import ShardSpec, write_shard_bytes  # noqa: E402
from yolov2.data.synthetic import SHAPE_CLASSES, generate_image  # noqa: E402
from yolov2.inference import ModelSpec, load_model_file, save_model_file  # noqa: E402

SHARD_SIZE = 16
TINY_VOC_ANCHORS = [[1.08, 1.19], [3.42, 4.41], [6.63, 11.38], [9.42, 5.11], [16.62, 10.52]]


def write_case(folder: Path, images: int, size: int) -> tuple[Path, list[ShardSpec]]:
    """The val shards and the model file."""
    specs = []
    for start in range(0, images, SHARD_SIZE):
        samples = []
        for index in range(start, min(start + SHARD_SIZE, images)):
            image, record = generate_image(3, index, "val", 320, 240, 8)
            ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            assert ok
            samples.append((record.image_id, jpeg.tobytes(), record))
        path = folder / f"val-{start // SHARD_SIZE:06d}.tar"
        path.write_bytes(write_shard_bytes(samples))
        specs.append(ShardSpec(str(path), len(samples)))
    torch.manual_seed(0)
    spec = ModelSpec(
        "yolov2_tiny_voc", len(SHAPE_CLASSES), TINY_VOC_ANCHORS, list(SHAPE_CLASSES), size, width_multiplier=0.5
    )
    save_model_file(folder / "model.pt", spec.build(), spec)
    return folder / "model.pt", specs


def run_rank(rank: int, world: int, folder: str, shards: list[ShardSpec], batch: int, repeats: int) -> None:
    """One rank: join the group, validate once untimed and ``repeats`` times timed; rank 0 writes the times."""
    from pipelines.config import EvaluateConfig, TrainConfig
    from pipelines.train.job import validation_predict
    from pipelines.train.validation import gather_predictions
    from yolov2.evaluation import validation_metrics

    torch.set_num_threads(1)
    store = Path(folder) / f"store-{world}"
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=timedelta(minutes=10)
    )
    model, spec = load_model_file(Path(folder) / "model.pt")
    precision = auto_precision("cpu")
    model = model.to(memory_format=precision.memory_format)
    predict = validation_predict(TrainConfig(input_size=spec.input_size), EvaluateConfig())
    wall, cpu, metrics_cpu, metrics = [], [], [], {}
    for _ in range(repeats + 1):
        dist.barrier()
        start, start_cpu = time.perf_counter(), time.process_time()
        gathered = gather_predictions(model, spec, shards, predict, batch, precision, rank, world)
        scoring = time.process_time()
        if gathered is not None:
            detections, records = gathered
            metrics = validation_metrics(records, detections, spec.class_names)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        metrics_cpu.append(time.process_time() - scoring)
    report = {"wall": wall[1:], "cpu": cpu[1:], "metrics_cpu": metrics_cpu[1:], "metrics": metrics}
    (Path(folder) / f"times-{world}-rank{rank}.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


def measure(world: int, folder: Path, shards: list[ShardSpec], batch: int, repeats: int, images: int) -> dict:
    """``world`` ranks validating: rank 0's wall times, each rank's CPU times, and the metrics."""
    mp.spawn(run_rank, args=(world, str(folder), shards, batch, repeats), nprocs=world, join=True)
    ranks = [json.loads((folder / f"times-{world}-rank{r}.json").read_text()) for r in range(world)]
    median = statistics.median(ranks[0]["wall"])
    return {
        "median_s": round(median, 3),
        "min_s": round(min(ranks[0]["wall"]), 3),
        "images_per_s": round(images / median, 2),
        "cpu_s": [round(statistics.median(r["cpu"]), 3) for r in ranks],
        "metrics_cpu_s": round(statistics.median(ranks[0]["metrics_cpu"]), 3),
        "samples": len(ranks[0]["wall"]),
        "metrics": ranks[0]["metrics"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="yolov2-bench-validation-") as tmp:
        folder = Path(tmp)
        _, shards = write_case(folder, args.images, args.size)
        alone = measure(1, folder, shards, args.batch, args.repeats, args.images)
        two = measure(2, folder, shards, args.batch, args.repeats, args.images)
    metrics = two.pop("metrics")
    identical = alone.pop("metrics") == metrics
    report = {
        "benchmark": "validation: 2 ranks, each its share, vs rank 0 alone",
        "images": args.images,
        "input_size": args.size,
        "batch_size": args.batch,
        "model": "yolov2_tiny_voc, width 0.5",
        "rank0_alone": alone,
        "two_ranks": two,
        "speedup": round(alone["median_s"] / two["median_s"], 3),
        "speedup_min_times": round(alone["min_s"] / two["min_s"], 3),
        "speedup_cpu": round(max(alone["cpu_s"]) / max(two["cpu_s"]), 3),
        "identical": identical,
        "metrics": metrics,
        "load_avg_1_5_15": {"before": _rounded(load_before), "after": _rounded(os.getloadavg())},
        **machine_facts(1, auto_precision("cpu").describe(), "torch intra-op threads per rank"),
    }
    print(json.dumps(report, indent=2))


def _rounded(values) -> list[float]:
    return [round(v, 2) for v in values]


if __name__ == "__main__":
    main()
