"""Training step overhead: the whole step of our training loop against the bare model forward + backward.

Prints one JSON object. Issue 6's benchmark (b) (benchmark (a), the input pipeline, is ``input_pipeline.py``).
At 416x416, batch 8, CPU, torch threads = the machine's cores, bf16 autocast + channels_last (the default CPU
training config), for yolov2-voc (``configs/voc.yaml``'s model) and the demo's tiny model (half width):

* ``bare``: ``model(x)`` under autocast and ``backward`` from a fixed output gradient (``x`` already float,
  channels_last), gradients dropped between runs: the work no training loop can avoid;
* ``step``: one optimizer step of :func:`yolov2.engine.trainer.train` itself, fed the same batch (a real
  :class:`~yolov2.data.loader.Batch` of voc100 photos, augmented, uint8, with their boxes): ``to_model_input``,
  autocast forward, region loss in float32, backward, lr schedule, SGD step (two weight-decay groups),
  ``zero_grad``, the loss parts read back as floats. The time of a step is the time between two requests for
  a batch (so data loading is excluded: benchmark (a) covers it);
* ``step_ema``: the same with the EMA of the weights on (``train.ema``, off by default).

Rounds alternate bare and step so background load hits all alike; each figure is the median of per-iteration
wall times over ``--rounds`` rounds of ``--iters`` iterations after one untimed warm-up round. The target is
``step / bare <= 1.15``.

    python benchmarks/train.py [--rounds 4] [--iters 3] [--size 416] [--batch 8] [--models yolov2_voc,tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from input_pipeline import load_records, write_shards  # noqa: E402  (the same real photos as benchmark (a))

MODELS = {  # label -> (model name, width multiplier)
    "yolov2_voc": ("yolov2_voc", 1.0),
    "tiny": ("yolov2_tiny_voc", 0.5),  # configs/demo.yaml's model
}
NUM_CLASSES = 20


def real_batch(size: int, batch: int):
    """One augmented training batch of real photos (voc100) at ``size``, as the loader gives it."""
    from yolov2.data.loader import ShardStream

    records = [r for r in load_records() if len(r.labels) and r.labels.max() < NUM_CLASSES][:batch]
    with tempfile.TemporaryDirectory(prefix="yolov2-bench-train-") as tmp:
        stream = ShardStream(write_shards(records, Path(tmp)), batch, train=True, size=size)
        return next(iter(stream))


def now() -> tuple[float, float]:
    """(wall, process CPU) seconds. CPU time (both threads) is far less disturbed than wall time by other jobs
    on a shared machine, so both are reported."""
    return time.perf_counter(), time.process_time()


def stamped(batch, n: int, stamps: list[tuple[float, float]]) -> Iterator:
    """Yield ``batch`` n times, noting the time of each request: consecutive stamps bracket one loop step."""
    for _ in range(n):
        stamps.append(now())
        yield batch
    stamps.append(now())


def loop_step_times(model, batch, iters: int, ema: bool, anchors: torch.Tensor) -> list[tuple[float, float]]:
    """(wall, CPU) seconds per optimizer step of the real training loop over ``iters`` steps of the same batch."""
    from yolov2.config import LossConfig
    from yolov2.engine.ema import ModelEMA
    from yolov2.engine.optim import build_sgd
    from yolov2.engine.trainer import LoopSettings, train
    from yolov2.loss import region_loss_kwargs

    optimizer = build_sgd(model, 0.001, 0.9, 0.0005)
    settings = LoopSettings(
        epochs=1, steps_per_epoch=iters, accumulation=1, images_per_micro_batch=len(batch.image_ids),
        anchors=anchors, num_classes=NUM_CLASSES, loss_kwargs=region_loss_kwargs(LossConfig()), lr=0.001,
        burn_in=1000, amp="bf16", channels_last=True, log_every=10,
    )
    stamps: list[tuple[float, float]] = []
    train(model, optimizer, lambda epoch, first: stamped(batch, iters, stamps), settings, torch.device("cpu"),
          ema=ModelEMA(model) if ema else None)
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(stamps, stamps[1:])]


def bare_times(model, x: torch.Tensor, grad: torch.Tensor, iters: int) -> list[tuple[float, float]]:
    times = []
    for _ in range(iters):
        wall, cpu = now()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        out.backward(grad)
        model.zero_grad(set_to_none=True)
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def measure(label: str, batch, rounds: int, iters: int) -> dict:
    from yolov2.data.loader import to_model_input
    from yolov2.models import build_model

    name, width = MODELS[label]
    torch.manual_seed(0)
    model = build_model(name, NUM_CLASSES, width_multiplier=width).to(memory_format=torch.channels_last).train()
    anchors = torch.tensor(model.default_anchors, dtype=torch.float32)
    x = to_model_input(batch.images).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grad = torch.randn(model(x).shape, generator=torch.Generator().manual_seed(0)).mul_(1e-3).bfloat16()
    timings: dict[str, Callable[[], list[tuple[float, float]]]] = {
        "bare": lambda: bare_times(model, x, grad, iters),
        "step": lambda: loop_step_times(model, batch, iters, False, anchors),
        "step_ema": lambda: loop_step_times(model, batch, iters, True, anchors),
    }
    for run in timings.values():  # warm-up: allocator, oneDNN kernels for these shapes
        run()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in timings}
    for _ in range(rounds):
        for key, run in timings.items():
            times[key].extend(run())
    wall = {k: [w for w, _ in v] for k, v in times.items()}
    cpu = {k: [c for _, c in v] for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in wall.items()}
    median_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    images = len(batch.image_ids)
    return {
        "model": name,
        "width_multiplier": width,
        "median_s": {k: round(v, 4) for k, v in median.items()},
        "min_s": {k: round(min(v), 4) for k, v in wall.items()},
        "median_cpu_s": {k: round(v, 4) for k, v in median_cpu.items()},
        "images_per_s": {k: round(images / v, 2) for k, v in median.items()},
        "overhead_vs_bare": {k: round(median[k] / median["bare"], 3) for k in ("step", "step_ema")},
        "overhead_vs_bare_min_times": {k: round(min(wall[k]) / min(wall["bare"]), 3) for k in ("step", "step_ema")},
        "overhead_vs_bare_cpu": {k: round(median_cpu[k] / median_cpu["bare"], 3) for k in ("step", "step_ema")},
        "samples_per_figure": len(wall["bare"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    args = parser.parse_args()

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    load_at_start = os.getloadavg()[0]
    batch = real_batch(args.size, args.batch)
    results = [measure(label, batch, args.rounds, args.iters) for label in args.models.split(",")]
    print(json.dumps({
        "benchmark": "train_step",
        "size": args.size,
        "batch": args.batch,
        "threads": threads,
        "precision": "bf16 autocast, channels_last, loss in float32",
        "boxes_in_batch": int((batch.targets[..., 0] >= 0).sum()),
        "timing": "per iteration, median over rounds x iters after a warm-up round; wall and process CPU time",
        "models": results,
        "target_overhead": 1.15,
        "load_average_1min": {"start": round(load_at_start, 2), "end": round(os.getloadavg()[0], 2)},
    }))


if __name__ == "__main__":
    main()
