"""Training step overhead: the whole step of our training loop against the bare model forward + backward, and the
loop step in each precision and layout.

Prints one JSON object. Issue 6's benchmark (b) (benchmark (a), the input pipeline, is ``input_pipeline.py``).
At 416x416, batch 8, on the CPU (``--device``), torch threads = the machine's cores, for yolov2-voc
(``configs/voc.yaml``'s model) and the demo's tiny model (half width). The overhead is measured in the precision
``auto`` picks on this machine (:func:`yolov2.engine.precision.choose_precision`: bf16 autocast + channels_last
where bf16 is native, float32 + channels_last on AVX2 CPUs), the default training config:

* ``bare``: ``model(x)`` (under autocast when ``auto`` picks it) and ``backward`` from a fixed output gradient
  (``x`` already float, in the picked layout), gradients dropped between runs: the work no training loop can
  avoid;
* ``step``: one optimizer step of :func:`yolov2.engine.trainer.train` itself, fed the same batch (a real
  :class:`~yolov2.data.batch.Batch` of voc100 photos, augmented, uint8, with their boxes): ``to_model_input``,
  forward, region loss in float32, backward, lr schedule, SGD step (two weight-decay groups), ``zero_grad``, the
  loss parts read back as floats. The time of a step is the time between two requests for a batch (so data
  loading is excluded: benchmark (a) covers it);
* ``step_ema``: the same with the EMA of the weights on (``train.ema``, off by default).

Rounds alternate bare and step so background load hits all alike; each figure is the median of per-iteration
wall times over ``--rounds`` rounds of ``--iters`` iterations after one untimed warm-up round. The target is
``step / bare <= 1.15``.

``precisions``: the ``step`` (EMA off) in each precision and layout available on the device (float32 and bf16
autocast, plus fp16 autocast on CUDA, each in NCHW and channels_last), which one ``auto`` picks and its time
against the fastest; the target is ``auto`` within 5% of the fastest. A variant over 5x the fastest so far on its
first timed step (process CPU time on the CPU; emulated bf16 on CPUs without native bf16) keeps that one step
and is marked ``capped`` (see ``machine.py``). The JSON also states the CPU's kind and whether it has native bf16.

    python benchmarks/train.py [--rounds 4] [--iters 3] [--size 416] [--batch 8] [--models yolov2_voc,tiny]
                               [--device cpu]
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
from machine import AUTO_TARGET_RATIO, auto_precision, machine_facts, precision_section, precision_table  # noqa: E402

from yolov2.engine.precision import Precision  # noqa: E402

MODELS = {  # label -> (model name, width multiplier)
    "yolov2_voc": ("yolov2_voc", 1.0),
    "tiny": ("yolov2_tiny_voc", 0.5),  # configs/demo.yaml's model
}
NUM_CLASSES = 20


def real_batch(size: int, batch: int):
    """One augmented training batch of real photos (voc100) at ``size``, as the loader gives it."""
    from yolov2.data.stream import ShardStream

    records = [r for r in load_records() if len(r.labels) and r.labels.max() < NUM_CLASSES][:batch]
    with tempfile.TemporaryDirectory(prefix="yolov2-bench-train-") as tmp:
        stream = ShardStream(write_shards(records, Path(tmp)), batch, train=True, size=size)
        return next(iter(stream))


def now() -> tuple[float, float]:
    """(wall, process CPU) seconds. CPU time (both threads) is far less disturbed than wall time by other jobs
    on a shared machine, so both are reported."""
    return time.perf_counter(), time.process_time()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stamped(batch, n: int, stamps: list[tuple[float, float]]) -> Iterator:
    """Yield ``batch`` n times, noting the time of each request: consecutive stamps bracket one loop step."""
    for _ in range(n):
        stamps.append(now())
        yield batch
    stamps.append(now())


def loop_step_times(
    model, batch, iters: int, ema: bool, anchors: torch.Tensor, precision: Precision, device: torch.device
) -> list[tuple[float, float]]:
    """(wall, CPU) seconds per optimizer step of the real training loop over ``iters`` steps of the same batch."""
    from yolov2.config import LoopConfig, LossConfig
    from yolov2.engine.ema import ModelEMA
    from yolov2.engine.optim import build_sgd
    from yolov2.engine.trainer import LoopSettings, train

    model.to(memory_format=precision.memory_format)
    optimizer = build_sgd(model, 0.001, 0.9, 0.0005)
    settings = LoopSettings(
        loop=LoopConfig(epochs=1, lr=0.001, burn_in=1000, log_every=10),
        loss=LossConfig(),
        steps_per_epoch=iters,
        accumulation=1,
        images_per_micro_batch=len(batch.image_ids),
        anchors=anchors,
        num_classes=NUM_CLASSES,
        amp=precision.amp,
        channels_last=precision.channels_last,
    )
    stamps: list[tuple[float, float]] = []
    train(
        model,
        optimizer,
        lambda epoch, first: stamped(batch, iters, stamps),
        settings,
        device,
        ema=ModelEMA(model) if ema else None,
    )
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(stamps, stamps[1:])]


def bare_times(
    model, x: torch.Tensor, grad: torch.Tensor, iters: int, precision: Precision
) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of ``iters`` bare forward + backward passes in ``precision``."""
    times = []
    for _ in range(iters):
        wall, cpu = now()
        with precision.autocast(x.device):
            out = model(x)
        out.backward(grad)
        model.zero_grad(set_to_none=True)
        synchronize(x.device)
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def overhead(
    model, batch, anchors: torch.Tensor, rounds: int, iters: int, precision: Precision, device: torch.device
) -> dict:
    """bare, step and step_ema in ``precision``, rounds interleaved: medians, minima and the ratios to bare."""
    from yolov2.data.batch import to_model_input

    model.to(memory_format=precision.memory_format)
    x = to_model_input(batch.images, device).contiguous(memory_format=precision.memory_format)
    with precision.autocast(device):
        out = model(x)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).mul_(1e-3).to(device, out.dtype)
    del out
    timings: dict[str, Callable[[], list[tuple[float, float]]]] = {
        "bare": lambda: bare_times(model, x, grad, iters, precision),
        "step": lambda: loop_step_times(model, batch, iters, False, anchors, precision, device),
        "step_ema": lambda: loop_step_times(model, batch, iters, True, anchors, precision, device),
    }
    for run in timings.values():  # warm-up: allocator, oneDNN kernels for these shapes
        run()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in timings}
    for _ in range(rounds):
        for key, run in timings.items():
            times[key].extend(run())
    wall = {k: [w for w, _ in v] for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in wall.items()}
    median_cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    images = len(batch.image_ids)
    return {
        "median_s": {k: round(v, 4) for k, v in median.items()},
        "min_s": {k: round(min(v), 4) for k, v in wall.items()},
        "median_cpu_s": {k: round(v, 4) for k, v in median_cpu.items()},
        "images_per_s": {k: round(images / v, 2) for k, v in median.items()},
        "overhead_vs_bare": {k: round(median[k] / median["bare"], 3) for k in ("step", "step_ema")},
        "overhead_vs_bare_min_times": {k: round(min(wall[k]) / min(wall["bare"]), 3) for k in ("step", "step_ema")},
        "overhead_vs_bare_cpu": {k: round(median_cpu[k] / median_cpu["bare"], 3) for k in ("step", "step_ema")},
        "samples_per_figure": len(wall["bare"]),
    }


def measure(label: str, batch, rounds: int, iters: int, device: torch.device) -> dict:
    """The overhead in ``auto``'s precision, then the loop step in every precision, for one model."""
    from yolov2.models import build_model

    name, width = MODELS[label]
    torch.manual_seed(0)
    model = build_model(name, NUM_CLASSES, width_multiplier=width).to(device).train()
    anchors = torch.tensor(model.default_anchors, dtype=torch.float32)
    result = {
        "model": name,
        "width_multiplier": width,
        **overhead(model, batch, anchors, rounds, iters, auto_precision(device), device),
    }

    def steps(precision: Precision, n: int) -> list[tuple[float, float]]:
        return loop_step_times(model, batch, n, False, anchors, precision, device)

    result["precisions"] = precision_section(device, {"loop_step": precision_table(device, steps, rounds, iters)})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    args = parser.parse_args()

    device = torch.device(args.device)
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    load_at_start = os.getloadavg()[0]
    batch = real_batch(args.size, args.batch)
    results = [measure(label, batch, args.rounds, args.iters, device) for label in args.models.split(",")]
    precision = auto_precision(device)
    print(
        json.dumps(
            {
                "benchmark": "train_step",
                "device": str(device),
                "size": args.size,
                "batch": args.batch,
                **machine_facts(
                    threads,
                    f"{precision.describe()} (auto), loss in float32",
                    "torch intra-op threads (the region loss runs on one, as in training)",
                ),
                "auto_reason": precision.reason,
                "boxes_in_batch": int((batch.targets[..., 0] >= 0).sum()),
                "timing": "per iteration, median over rounds x iters after a warm-up round; wall and process CPU time",
                "models": results,
                "target_overhead": 1.15,
                "auto_target_ratio": AUTO_TARGET_RATIO,
                "auto_target_met": all(r["precisions"]["auto_target_met"] for r in results),
                "auto_target_met_cpu": all(r["precisions"]["auto_target_met_cpu"] for r in results),
                "load_average_1min": {"start": round(load_at_start, 2), "end": round(os.getloadavg()[0], 2)},
            }
        )
    )


if __name__ == "__main__":
    main()
