"""pipelines/cli_common.py: the config check every stage script and full.py run before joining Ray (slow
precision choices are warned about there, before minutes of training, not after), and ``stage_main``, the
command line of every stage script."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import anchors, cli_common, full, prepare, ray_runtime
from pipelines.dag import StageFlag
from pipelines.faults import FaultPlan
from yolov2.engine.precision import Hardware

REPO = Path(__file__).resolve().parents[2]
AVX2 = Hardware("cpu", "AVX2")
AMX = Hardware("cpu", "AVX512", avx512_bf16=True, amx=True)


class RayStarted(Exception):
    pass


@pytest.fixture
def ray_start_records(monkeypatch, caplog):
    """Stops the command where it would join Ray, keeping the log records emitted before that moment."""
    seen: list[list[logging.LogRecord]] = []

    def connect(*args, **kwargs):
        seen.append(list(caplog.records))
        raise RayStarted

    monkeypatch.setattr(ray_runtime, "connect", connect)
    caplog.set_level(logging.WARNING)
    return seen


def _warnings(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if r.levelno == logging.WARNING]


@pytest.mark.parametrize(
    "main", [full.main, functools.partial(cli_common.stage_main, anchors.SPEC)], ids=["full", "single-stage"]
)
def test_slow_precision_is_warned_about_before_ray_starts(main, monkeypatch, ray_start_records, tmp_path):
    monkeypatch.setattr(cli_common, "detect_hardware", lambda device="cpu": AVX2)
    with pytest.raises(RayStarted):
        main(
            [
                "--config",
                str(REPO / "configs/demo.yaml"),
                "--workspace",
                str(tmp_path),
                "--no-mlflow",
                "--set",
                "train.amp=bf16",
            ]
        )
    [before_ray] = ray_start_records
    assert _warnings(before_ray) == [
        "train.amp=bf16 on a CPU without native bf16 (AVX2): expect about 10x slower than float32; use train.amp=auto"
    ]


def test_no_warning_for_auto_or_native_bf16(monkeypatch):
    cfg = cli_common.load_config(REPO / "configs/demo.yaml")
    monkeypatch.setattr(cli_common, "detect_hardware", lambda device="cpu": AVX2)
    assert cli_common.precision_warnings(cfg) == []
    cfg.train.amp = cfg.evaluate.amp = "bf16"
    assert [w.split(".")[0] for w in cli_common.precision_warnings(cfg)] == ["train", "evaluate"]
    monkeypatch.setattr(cli_common, "detect_hardware", lambda device="cpu": AMX)
    assert cli_common.precision_warnings(cfg) == []
    cfg.train.use_gpu, cfg.evaluate.gpus_per_actor = True, 1.0  # GPU workers check their own device
    monkeypatch.setattr(cli_common, "detect_hardware", lambda device="cpu": AVX2)
    assert cli_common.precision_warnings(cfg) == []


TINY_PREPARE = [
    "--config",
    str(REPO / "configs/demo.yaml"),
    "--no-mlflow",
    "--set",
    "data.synthetic.num_train=2",
    "--set",
    "data.synthetic.num_val=1",
    "--set",
    "data.synthetic.num_test=1",
]


@pytest.fixture
def no_ray(monkeypatch):
    """prepare needs no Ray: keep stage_main from starting an instance."""
    monkeypatch.setattr(ray_runtime, "connect", lambda *args, **kwargs: None)


def test_stage_main_runs_the_stage_then_finds_it_cached(no_ray, tmp_path, capsys):
    args = [*TINY_PREPARE, "--workspace", str(tmp_path / "ws")]
    assert cli_common.stage_main(prepare.SPEC, args) == 0
    first = capsys.readouterr().out
    assert first.startswith("prepare: done in ") and f"-> {tmp_path / 'ws' / 'prepare'}/" in first
    manifest = json.loads(first.split("\n", 1)[1])
    assert manifest["stage"] == "prepare" and manifest["format"] == "voc"
    assert cli_common.stage_main(prepare.SPEC, args) == 0
    assert capsys.readouterr().out.startswith("prepare: cached -> ")
    assert cli_common.stage_main(prepare.SPEC, [*args, "--force"]) == 0
    assert capsys.readouterr().out.startswith("prepare: done in ")


def test_stage_main_exits_2_naming_the_upstream_command(no_ray, tmp_path, caplog):
    code = cli_common.stage_main(anchors.SPEC, [*TINY_PREPARE, "--workspace", str(tmp_path / "ws")])
    assert code == 2
    assert "Run it first: python -m pipelines.shard --config <same config>" in caplog.text


def test_stage_main_has_the_stage_flags_and_the_fault_plan_from_the_environment(no_ray, tmp_path, monkeypatch):
    seen = []
    spec = dataclasses.replace(
        prepare.SPEC,
        body=lambda ctx, **flags: seen.append((flags, ctx.faults)) or {},
        flags=(StageFlag("resume", "continue", keeps_partial_output=True),),
    )
    monkeypatch.setenv("YOLOV2_FAULT_SHARD_DIR", str(tmp_path / "markers"))
    assert cli_common.stage_main(spec, [*TINY_PREPARE, "--workspace", str(tmp_path / "ws"), "--resume"]) == 0
    assert seen == [({"resume": True}, FaultPlan(shard_kind="exit", shard_marker_dir=str(tmp_path / "markers")))]
    with pytest.raises(SystemExit):  # a flag the stage does not declare
        cli_common.stage_main(prepare.SPEC, [*TINY_PREPARE, "--resume"])


def test_stage_script_help_is_its_module_docstring():
    done = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "prepare.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "The `prepare` stage: make the raw dataset named by the config exist on local disk." in done.stdout
    assert "--force" in done.stdout and "--no-mlflow" in done.stdout


@pytest.mark.parametrize(
    "main", [full.main, functools.partial(cli_common.stage_main, anchors.SPEC)], ids=["full", "single-stage"]
)
@pytest.mark.parametrize("extra, verbose", [([], False), (["--verbose"], True)], ids=["default", "verbose"])
def test_verbose_reaches_ray_runtime_and_is_explained_in_help(main, extra, verbose, monkeypatch, tmp_path, capsys):
    seen = []

    def connect(*args, **kwargs):
        seen.append(kwargs.get("verbose"))
        raise RayStarted

    monkeypatch.setattr(ray_runtime, "connect", connect)
    with pytest.raises(RayStarted):
        main(["--config", str(REPO / "configs/demo.yaml"), "--workspace", str(tmp_path), "--no-mlflow", *extra])
    assert seen == [verbose]
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--verbose" in capsys.readouterr().out.replace("\n", " ")
