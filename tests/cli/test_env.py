"""`yolov2 env` against what torch and yolov2.engine.precision report when asked directly in the test."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys

import numpy
import pytest
import torch

from yolov2.cli import build_parser, main
from yolov2.cli import env as env_cli
from yolov2.engine.precision import choose_precision, detect_hardware

CPU_VARIANTS = {"float32, NCHW", "float32, channels_last", "bf16 autocast, NCHW", "bf16 autocast, channels_last"}


def env_json(capsys, *argv: str) -> dict:
    assert main(["env", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_text_names_capability_and_choice(capsys) -> None:
    assert main(["env", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    choice = choose_precision(detect_hardware("cpu"), "auto", "auto")
    assert torch.backends.cpu.get_cpu_capability() in out
    assert choice.describe() in out
    assert choice.reason in out
    assert f"torch        {importlib.metadata.version('torch')}" in out


def test_json_agrees_with_torch_and_precision(capsys) -> None:
    report = env_json(capsys, "--device", "cpu")
    hw = detect_hardware("cpu")
    choice = choose_precision(hw, "auto", "auto")
    assert report["cpu"]["capability"] == torch.backends.cpu.get_cpu_capability() == hw.cpu_capability
    assert report["cpu"]["avx512_bf16"] == hw.avx512_bf16
    assert report["cpu"]["amx"] == hw.amx
    assert report["cpu"]["native_bf16"] == hw.native_bf16
    assert isinstance(report["cpu"]["model"], str) and report["cpu"]["model"]
    assert report["choice"] == {
        "device": "cpu",
        "hardware": hw.describe(),
        "amp": choice.amp,
        "channels_last": choice.channels_last,
        "precision": choice.describe(),
        "reason": choice.reason,
    }
    assert report["threads"] == torch.get_num_threads()
    assert report["cpu_count"] == os.cpu_count()
    versions = report["versions"]
    assert torch.__version__.startswith(versions["torch"])
    assert versions["numpy"] == numpy.__version__
    assert versions["python"] == ".".join(map(str, sys.version_info[:3]))
    assert set(versions) >= {"python", "platform", "torch", "torchvision", "ray", "mlflow", "numpy"}
    assert len(report["cuda"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)


def test_default_device_is_cuda_when_available(capsys) -> None:
    report = env_json(capsys)
    assert report["choice"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


def test_missing_package_is_reported(capsys, monkeypatch) -> None:
    real_version = importlib.metadata.version

    def version(name: str) -> str:
        if name == "mlflow":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    report = env_json(capsys, "--device", "cpu")
    assert report["versions"]["mlflow"] == "not installed"
    assert report["versions"]["numpy"] == numpy.__version__


def test_imports_neither_ray_nor_mlflow() -> None:
    code = (
        "import contextlib, io, sys\n"
        "from yolov2.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['env', '--json', '--device', 'cpu']) == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_bench_json(capsys) -> None:
    report = env_json(
        capsys, "--device", "cpu", "--bench", "--bench-size", "64", "--bench-batch", "1", "--bench-iters", "2"
    )
    bench = report["bench"]
    assert (bench["device"], bench["size"], bench["batch"]) == ("cpu", 64, 1)
    rows = {row["name"]: row for row in bench["variants"]}
    assert set(rows) == CPU_VARIANTS
    for row in rows.values():
        assert row["seconds_per_iter"] > 0
        assert 1 <= row["iters"] <= 2
        assert row["ratio"] >= 1.0
    fastest = min(rows.values(), key=lambda row: row["seconds_per_iter"])
    assert fastest["ratio"] == 1.0 and bench["fastest"] == fastest["name"]
    auto = choose_precision(detect_hardware("cpu"), "auto", "auto")
    assert bench["auto"]["name"] == auto.describe()
    assert bench["auto"]["ratio"] == rows[auto.describe()]["ratio"]


def test_bench_text_table(capsys, monkeypatch) -> None:
    fake = {
        "device": "cpu",
        "model": "m",
        "batch": 1,
        "size": 64,
        "budget_s": 2.0,
        "fastest": "float32, NCHW",
        "variants": [
            {
                "name": "float32, NCHW",
                "amp": "off",
                "channels_last": False,
                "seconds_per_iter": 0.5,
                "iters": 3,
                "ratio": 1.0,
            },
            {
                "name": "bf16 autocast, NCHW",
                "amp": "bf16",
                "channels_last": False,
                "seconds_per_iter": 5.0,
                "iters": 1,
                "ratio": 10.0,
            },
        ],
        "auto": {"name": "float32, NCHW", "amp": "off", "channels_last": False, "ratio": 1.0},
    }
    monkeypatch.setattr(env_cli, "run_bench", lambda *args: fake)
    assert main(["env", "--device", "cpu", "--bench"]) == 0
    out = capsys.readouterr().out
    assert "bf16 autocast, NCHW" in out and "10.00" in out
    assert "auto picks float32, NCHW: 1.00x the fastest" in out


def test_budget_caps_a_slow_variant() -> None:
    now = [0.0]
    calls: list[str] = []

    def step(name: str, cost: float):
        def run() -> None:
            calls.append(name)
            now[0] += cost

        return run

    times = env_cli.interleaved_times(
        {"fast": step("fast", 0.1), "slow": step("slow", 1.5)}, iters=5, budget_s=2.0, clock=lambda: now[0]
    )
    assert times["fast"] == pytest.approx([0.1] * 5)
    assert times["slow"] == pytest.approx([1.5])  # warm-up 1.5 s + one timed 1.5 s: over the budget
    assert calls[:4] == ["fast", "slow", "fast", "slow"]  # warm-ups, then rounds across the variants


def test_variants_per_device() -> None:
    assert {env_cli.variant_name(*v) for v in env_cli.bench_variants("cpu")} == CPU_VARIANTS
    cuda = {amp for amp, _ in env_cli.bench_variants("cuda", cuda_bf16=False)}
    assert cuda == {"off", "fp16"}
    assert {amp for amp, _ in env_cli.bench_variants("cuda", cuda_bf16=True)} == {"off", "bf16", "fp16"}


def test_parse_cpu_model() -> None:
    x86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 85\nmodel name\t: Intel(R) Xeon(R) Gold 6248\n"
    assert env_cli.parse_cpu_model(x86) == "Intel(R) Xeon(R) Gold 6248"
    arm = "processor\t: 0\nBogoMIPS\t: 108.00\n\nHardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B\n"
    assert env_cli.parse_cpu_model(arm) == "Raspberry Pi 4 Model B"
    assert env_cli.parse_cpu_model("processor\t: 0\n") is None


@pytest.mark.parametrize("device", ["mps", "not-a-device"])
def test_unusable_device_is_refused(capsys, device: str) -> None:
    assert main(["env", "--device", device]) == 2
    assert device in capsys.readouterr().err


def test_cuda_refused_without_cuda(capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(["env", "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_help_explains_every_option(capsys) -> None:
    parser = build_parser()
    sub = next(a for a in parser._subparsers._group_actions if a.choices and "env" in a.choices).choices["env"]
    options = [a for a in sub._actions if a.option_strings and a.dest != "help"]
    assert {o.option_strings[0] for o in options} == {
        "--json",
        "--device",
        "--bench",
        "--bench-size",
        "--bench-batch",
        "--bench-iters",
        "--bench-budget",
    }
    assert all(o.help for o in options)
    with pytest.raises(SystemExit) as exit_info:
        main(["env", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in options:
        assert option.option_strings[0] in out
