"""What every benchmark states about the machine, and the per-precision timing of ``train.py`` and ``model.py``.

Not a benchmark itself: run alone, it prints one JSON object with the machine's facts and the precision
``auto`` picks there (:func:`yolov2.engine.precision.choose_precision`), without timing anything.

* :func:`machine_facts`: ``cpu_capability``, ``native_bf16`` and the hardware in words, with the thread (or
  worker) count and the precision a benchmark measured in. Every benchmark's JSON includes it.
* :func:`precision_table`: times one operation in each precision and layout available on the device
  (:func:`precision_variants`) and reports which one ``auto`` picks and its time against the fastest. A variant
  whose first timed iteration is over ``CAP_FACTOR`` x the fastest so far (emulated bf16 on CPUs without native
  bf16: up to an order of magnitude slower) keeps that one iteration and is marked ``capped``. On the CPU that
  is judged by process CPU time, which other jobs on a shared machine barely disturb (their load can stretch
  the wall time of any iteration several times over); on CUDA by wall time.

torch is imported inside the functions: ``evaluate.py``'s baseline subprocesses import this module and must
stay free of torch.

    python benchmarks/machine.py [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from yolov2.engine.precision import Precision

NO_MODEL = "n/a (no model)"
CAP_FACTOR = 5.0  # a variant slower than this x the fastest so far is timed once
AUTO_TARGET_RATIO = 1.05  # auto's time / the fastest variant's


def machine_facts(threads: int, precision: str, threads_are: str = "torch intra-op threads") -> dict:
    """The CPU's kind, whether bf16 is native on it, and the threads and precision of the measurement."""
    import torch

    from yolov2.engine.precision import detect_hardware

    hw = detect_hardware("cpu")
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": hw.native_bf16,
        "hardware": hw.describe(),
        "threads": threads,
        "threads_are": threads_are,
        "precision": precision,
    }


def torch_device_type(device: torch.device | str) -> str:
    """The type ("cpu", "cuda", ...) of a device or its name."""
    import torch

    return torch.device(device).type


def precision_variants(device: torch.device | str) -> list[Precision]:
    """The precisions and layouts worth timing on ``device`` (:func:`yolov2.engine.precision.timeable_precisions`)."""
    from yolov2.engine.precision import detect_hardware, timeable_precisions

    return timeable_precisions(detect_hardware(device))


def auto_precision(device: torch.device | str) -> Precision:
    """What ``amp: auto`` and ``channels_last: auto`` resolve to on ``device``."""
    from yolov2.engine.precision import choose_precision, detect_hardware

    return choose_precision(detect_hardware(device))


Timing = tuple[float, float]  # (wall, process CPU) seconds of one iteration


def timed(fn: Callable[[], object]) -> Timing:
    """(wall, process CPU) seconds of ``fn()``. CPU time is far less disturbed than wall time by other jobs on a
    shared machine; for multi-threaded work it also counts the threads' spinning, so ratios are what compare."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def time_variants(
    variants: list[Precision], run: Callable[[Precision, int], list[Timing]], rounds: int, iters: int, cap_on: int = 1
) -> tuple[dict[str, list[Timing]], set[str]]:
    """(wall, CPU) seconds per iteration of each variant, and the names of the capped ones.

    ``run(p, n)`` runs ``n`` iterations in precision ``p`` and returns the time of each. Every variant runs one
    untimed warm-up iteration and one timed; a variant whose time (``cap_on``: 0 wall, 1 CPU) is over
    ``CAP_FACTOR`` x the fastest so far stops there, the others then run ``rounds`` rounds of ``iters``
    iterations, interleaved across variants.
    """
    times: dict[str, list[Timing]] = {}
    capped: set[str] = set()
    for p in variants:
        run(p, 1)
        first = run(p, 1)
        if times and first[0][cap_on] > CAP_FACTOR * fastest_so_far(times, capped, cap_on):
            capped.add(p.describe())
        times[p.describe()] = first
    for _ in range(rounds):
        for p in variants:
            if p.describe() not in capped:
                times[p.describe()].extend(run(p, iters))
    return times, capped


def fastest_so_far(times: dict[str, list[Timing]], capped: set[str], index: int) -> float:
    """The least wall (``index`` 0) or CPU (1) seconds of an iteration among the uncapped variants."""
    return min(t[index] for name, samples in times.items() if name not in capped for t in samples)


def summarise(times: dict[str, list[Timing]], capped: set[str], auto: Precision) -> dict:
    """Per-variant medians and min, the fastest variant, auto's pick and its ratios to the fastest: by wall median
    (``auto_target_met``), by the least wall times and by median process CPU (``auto_target_met_cpu``, the figure
    least disturbed by other jobs on a shared machine)."""
    wall = {name: [w for w, _ in t] for name, t in times.items()}
    median = {name: statistics.median(w) for name, w in wall.items()}
    median_cpu = {name: statistics.median(c for _, c in t) for name, t in times.items()}
    fastest = min(median, key=median.get)
    name = auto.describe()
    ratio = median[name] / median[fastest]
    ratio_cpu = median_cpu[name] / min(median_cpu.values())
    return {
        "variants": [
            {
                "precision": v,
                "median_s": round(median[v], 4),
                "min_s": round(min(wall[v]), 4),
                "median_cpu_s": round(median_cpu[v], 4),
                "samples": len(wall[v]),
                "capped": v in capped,
                "ratio_to_fastest": round(median[v] / median[fastest], 3),
            }
            for v in times
        ],
        "fastest": fastest,
        "auto": name,
        "auto_ratio_to_fastest": round(ratio, 3),
        "auto_ratio_to_fastest_min_times": round(min(wall[name]) / min(min(w) for w in wall.values()), 3),
        "fastest_cpu": min(median_cpu, key=median_cpu.get),
        "auto_ratio_to_fastest_cpu": round(ratio_cpu, 3),
        "auto_target_ratio": AUTO_TARGET_RATIO,
        "auto_target_met": ratio <= AUTO_TARGET_RATIO,
        "auto_target_met_cpu": ratio_cpu <= AUTO_TARGET_RATIO,
    }


def precision_table(
    device: torch.device | str, run: Callable[[Precision, int], list[Timing]], rounds: int, iters: int
) -> dict:
    """:func:`time_variants` over every variant on ``device``, summarised against ``auto``'s pick."""
    auto = auto_precision(device)
    cap_on = 0 if torch_device_type(device) == "cuda" else 1
    times, capped = time_variants(precision_variants(device), run, rounds, iters, cap_on)
    return summarise(times, capped, auto)


def precision_section(device: torch.device | str, tables: dict[str, dict]) -> dict:
    """The JSON section around one or more precision tables: auto's pick and why, and the capping rule."""
    auto = auto_precision(device)
    cap_time = "wall" if torch_device_type(device) == "cuda" else "process CPU"
    return {
        "auto": auto.describe(),
        "auto_reason": auto.reason,
        "timing": (
            f"wall seconds per iteration (median, min) and process CPU (median) after one warm-up; a variant "
            f"over {CAP_FACTOR:g}x the fastest so far on its first timed iteration ({cap_time} time) keeps "
            "that one ('capped'); auto_target_met on wall medians, auto_target_met_cpu on CPU medians"
        ),
        **tables,
        "auto_target_met": all(t["auto_target_met"] for t in tables.values()),
        "auto_target_met_cpu": all(t["auto_target_met_cpu"] for t in tables.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    import torch

    auto = auto_precision(args.device)
    facts = machine_facts(torch.get_num_threads(), "n/a (nothing timed)")
    print(
        json.dumps(
            {
                "benchmark": "machine (nothing timed)",
                **facts,
                "device": args.device,
                "auto": auto.describe(),
                "auto_reason": auto.reason,
                "variants": [p.describe() for p in precision_variants(args.device)],
            }
        )
    )


if __name__ == "__main__":
    main()
