"""The config check every stage script and full.py run before joining Ray: slow precision choices are warned
about there, before minutes of training, not after."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pipelines import anchors, cli_common, full, ray_runtime
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


@pytest.mark.parametrize("main", [full.main, anchors.main], ids=["full", "single-stage"])
def test_slow_precision_is_warned_about_before_ray_starts(main, monkeypatch, ray_start_records, tmp_path):
    monkeypatch.setattr(cli_common, "detect_hardware", lambda device="cpu": AVX2)
    with pytest.raises(RayStarted):
        main(["--config", str(REPO / "configs/demo.yaml"), "--workspace", str(tmp_path), "--no-mlflow",
              "--set", "train.amp=bf16"])
    [before_ray] = ray_start_records
    assert _warnings(before_ray) == [
        "train.amp=bf16 on a CPU without native bf16 (AVX2): expect about 10x slower than float32; use train.amp=auto"]


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
