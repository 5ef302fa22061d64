"""`yolov2 env`: the versions, devices and precision choice a bug report needs, optionally with a speed check.

A slow demo or a run that looks stuck is most often the hardware, not the code: bf16 autocast on a CPU
without native bf16 is emulated and an order of magnitude slower than float32. This prints what
:mod:`yolov2.engine.precision` sees on this machine and what ``auto`` would pick; ``--bench`` times one
forward+backward of a tiny model in each precision the device offers, so the choice can be checked here.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from yolov2.engine.precision import (
    Amp,
    Hardware,
    Precision,
    autocast,
    choose_precision,
    detect_hardware,
    timeable_precisions,
)

PACKAGES = ("torch", "torchvision", "ray", "mlflow", "numpy")
# environment variables that change which kernels torch and oneDNN run, or how many threads they use
ENV_VARS = (
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
)
BENCH_MODEL = ("yolov2_tiny_voc", 20, 0.25)  # name, classes, width multiplier: small enough for seconds on a CPU
NOT_INSTALLED = "not installed"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "env",
        help="versions, devices and precision choice, for bug reports",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object instead of text (attach this to a bug report)"
    )
    p.add_argument(
        "--device",
        default=None,
        help="device whose precision choice (and --bench) to report: cpu, cuda or cuda:N "
        "(default: cuda if available, else cpu)",
    )
    p.add_argument(
        "--bench",
        action="store_true",
        help="also time forward+backward of a tiny model (yolov2_tiny_voc at width 0.25) in each "
        "precision and memory layout the device offers, a few seconds in all",
    )
    p.add_argument(
        "--bench-size",
        type=int,
        default=160,
        help="square input side in pixels for --bench, a multiple of 32 (default 160)",
    )
    p.add_argument("--bench-batch", type=int, default=4, help="batch size for --bench (default 4)")
    p.add_argument(
        "--bench-iters",
        type=int,
        default=5,
        help="timed iterations per variant for --bench, after one untimed warm-up (default 5)",
    )
    p.add_argument(
        "--bench-budget",
        type=float,
        default=2.0,
        help="seconds per variant for --bench: no more iterations start once a variant has used "
        "them, so an emulated precision cannot run for minutes (default 2.0)",
    )
    p.set_defaults(run=run)


# --- what the machine is --------------------------------------------------------------------------------


def package_version(name: str) -> str:
    """The installed version, read from metadata so that ray and mlflow are never imported."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return NOT_INSTALLED


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    out.update({name: package_version(name) for name in PACKAGES})
    out["torch_cuda"] = torch.version.cuda or "none"  # the CUDA torch was built for ("none": a CPU-only build)
    return out


def parse_cpu_model(cpuinfo: str) -> str | None:
    """The CPU's name from /proc/cpuinfo text: ``model name`` on x86, ``Model``/``Hardware`` on some ARM boards."""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in cpuinfo.splitlines():
            field, sep, value = line.partition(":")
            if sep and field.strip() == key and value.strip():
                return value.strip()
    return None


def cpu_model(cpuinfo_path: Path = Path("/proc/cpuinfo")) -> str:
    try:
        name = parse_cpu_model(cpuinfo_path.read_text(errors="replace"))
    except OSError:
        name = None
    return name or platform.processor() or "unknown"


def cuda_devices() -> list[dict[str, Any]]:
    """Each visible GPU; ``bf16`` is native support (compute capability 8.0+), not torch's emulated bf16."""
    if not torch.cuda.is_available():
        return []
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        devices.append(
            {
                "index": index,
                "name": props.name,
                "capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.total_memory / 2**30, 1),
                "bf16": props.major >= 8,
            }
        )
    return devices


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def collect(device: str) -> dict[str, Any]:
    """Everything but the benchmark, as one JSON-ready dict."""
    cpu_hw = detect_hardware("cpu")
    hw = cpu_hw if torch.device(device).type == "cpu" else detect_hardware(device)
    choice = choose_precision(hw, "auto", "auto")
    return {
        "versions": versions(),
        "cpu": {
            "model": cpu_model(),
            "capability": cpu_hw.cpu_capability,
            "avx512_bf16": cpu_hw.avx512_bf16,
            "amx": cpu_hw.amx,
            "native_bf16": cpu_hw.native_bf16,
        },
        "cuda": cuda_devices(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "env_vars": {name: os.environ[name] for name in ENV_VARS if name in os.environ},
        "choice": {
            "device": device,
            "hardware": hw.describe(),
            "amp": choice.amp,
            "channels_last": choice.channels_last,
            "precision": choice.describe(),
            "reason": choice.reason,
        },
    }


# --- the micro-benchmark ----------------------------------------------------------------------------------


def bench_variants(device_type: str, cuda_bf16: bool = False) -> list[tuple[Amp, bool]]:
    """(amp, channels_last) pairs worth timing on such a device (:func:`timeable_precisions`)."""
    hw = Hardware(device_type, torch.backends.cpu.get_cpu_capability(), cuda_bf16=cuda_bf16)
    return [(p.amp, p.channels_last) for p in timeable_precisions(hw)]


def variant_name(amp: Amp, channels_last: bool) -> str:
    return Precision(amp, channels_last, "").describe()


def interleaved_times(
    steps: dict[str, Callable[[], None]], iters: int, budget_s: float, clock: Callable[[], float] = time.perf_counter
) -> dict[str, list[float]]:
    """Per step: one untimed warm-up, then up to ``iters`` timed calls, taken in rounds across the steps so
    that background load slows them all alike. A step gets no further call once its calls (warm-up included)
    have used ``budget_s``, but at least one is timed: an emulated precision costs seconds, not minutes."""
    spent = dict.fromkeys(steps, 0.0)
    times: dict[str, list[float]] = {name: [] for name in steps}

    def call(name: str) -> float:
        t0 = clock()
        steps[name]()
        elapsed = clock() - t0
        spent[name] += elapsed
        return elapsed

    for name in steps:
        call(name)
    while True:
        pending = [name for name in steps if len(times[name]) < iters and not (times[name] and spent[name] >= budget_s)]
        if not pending:
            return times
        for name in pending:
            times[name].append(call(name))


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add each row's time relative to the fastest (the fastest gets exactly 1.0)."""
    fastest = min(row["seconds_per_iter"] for row in rows)
    return [{**row, "ratio": round(row["seconds_per_iter"] / fastest, 3)} for row in rows]


def run_bench(device: str, size: int, batch: int, iters: int, budget_s: float) -> dict[str, Any]:
    """Seconds per forward+backward (median) of each precision variant, and where ``auto`` stands among them."""
    from yolov2.models import build_model  # only --bench needs the model code

    dev = torch.device(device)
    hw = detect_hardware(dev)
    auto = choose_precision(hw, "auto", "auto")
    model_name, classes, width = BENCH_MODEL
    torch.manual_seed(0)
    model = build_model(model_name, classes, width_multiplier=width).to(dev).train()
    x_nchw = torch.randn(batch, 3, size, size, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    models = {False: model, True: copy.deepcopy(model).to(memory_format=torch.channels_last)}
    variants = {variant_name(amp, cl): (amp, cl) for amp, cl in bench_variants(dev.type, hw.cuda_bf16)}

    def make_step(amp: Amp, channels_last: bool) -> Callable[[], None]:
        net = models[channels_last]
        x = x_nchw.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

        def step() -> None:
            with autocast(amp, dev):
                out = net(x)
            out.float().sum().backward()
            net.zero_grad(set_to_none=True)
            sync()

        return step

    times = interleaved_times({name: make_step(*v) for name, v in variants.items()}, iters, budget_s)
    rows: list[dict[str, Any]] = [
        {
            "name": name,
            "amp": amp,
            "channels_last": cl,
            "seconds_per_iter": statistics.median(times[name]),
            "iters": len(times[name]),
        }
        for name, (amp, cl) in variants.items()
    ]
    rows = with_ratios(rows)
    auto_name = auto.describe()
    auto_ratio = next((row["ratio"] for row in rows if row["name"] == auto_name), None)
    return {
        "device": device,
        "model": f"{model_name} x{width}",
        "batch": batch,
        "size": size,
        "budget_s": budget_s,
        "variants": rows,
        "fastest": min(rows, key=lambda r: r["seconds_per_iter"])["name"],
        "auto": {"name": auto_name, "amp": auto.amp, "channels_last": auto.channels_last, "ratio": auto_ratio},
    }


# --- output -------------------------------------------------------------------------------------------------


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def format_text(report: dict[str, Any]) -> str:
    v, cpu, choice = report["versions"], report["cpu"], report["choice"]
    lines = ["versions"]
    lines += [f"  {key:<12} {value}" for key, value in v.items()]
    lines += [
        "cpu",
        f"  {'model':<12} {cpu['model']}",
        f"  {'capability':<12} {cpu['capability']} (torch.backends.cpu.get_cpu_capability())",
        f"  {'avx512_bf16':<12} {yes_no(cpu['avx512_bf16'])}",
        f"  {'amx':<12} {yes_no(cpu['amx'])}",
        f"  {'bf16':<12} {'native' if cpu['native_bf16'] else 'emulated (slow)'}",
        f"  {'threads':<12} {report['threads']} torch threads, os.cpu_count() {report['cpu_count']}",
    ]
    if report["cuda"]:
        lines.append("cuda")
        lines += [
            f"  cuda:{d['index']:<7} {d['name']} (sm {d['capability']}, {d['memory_gib']} GiB, "
            f"bf16 {'native' if d['bf16'] else 'emulated'})"
            for d in report["cuda"]
        ]
    else:
        lines.append(f"{'cuda':<14} none available")
    if report["env_vars"]:
        lines.append("environment")
        lines += [f"  {key}={value}" for key, value in report["env_vars"].items()]
    lines += [
        f"auto choice on {choice['device']}",
        f"  {'precision':<12} {choice['precision']}",
        f"  {'hardware':<12} {choice['hardware']}",
        f"  {'reason':<12} {choice['reason']}",
    ]
    if "bench" in report:
        lines += format_bench(report["bench"])
    return "\n".join(lines)


def format_bench(bench: dict[str, Any]) -> list[str]:
    lines = [
        f"bench: forward+backward of {bench['model']}, batch {bench['batch']} at {bench['size']}x{bench['size']} "
        f"on {bench['device']} (median; at most {bench['budget_s']:g} s per variant)",
        f"  {'variant':<30} {'s/iter':>9} {'iters':>6} {'x fastest':>10}",
    ]
    lines += [
        f"  {r['name']:<30} {r['seconds_per_iter']:>9.4f} {r['iters']:>6} {r['ratio']:>10.2f}"
        for r in bench["variants"]
    ]
    auto = bench["auto"]
    ratio = "not timed" if auto["ratio"] is None else f"{auto['ratio']:.2f}x the fastest ({bench['fastest']})"
    lines.append(f"  auto picks {auto['name']}: {ratio}")
    return lines


def run(args: argparse.Namespace) -> int:
    device = args.device or default_device()
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        print(f"yolov2 env: --device {device!r}: {exc}", file=sys.stderr)
        return 2
    if dev.type == "cuda" and not torch.cuda.is_available():
        print(f"yolov2 env: --device {device}: CUDA is not available here", file=sys.stderr)
        return 2
    if dev.type not in ("cpu", "cuda"):
        print(f"yolov2 env: --device {device}: only cpu and cuda are supported", file=sys.stderr)
        return 2
    if args.bench and (args.bench_size < 32 or args.bench_size % 32 or args.bench_batch < 1 or args.bench_iters < 1):
        print(
            "yolov2 env: --bench-size must be a positive multiple of 32, --bench-batch and --bench-iters >= 1",
            file=sys.stderr,
        )
        return 2
    report = collect(device)
    if args.bench:
        report["bench"] = run_bench(device, args.bench_size, args.bench_batch, args.bench_iters, args.bench_budget)
    print(json.dumps(report, indent=2) if args.json else format_text(report))
    return 0
