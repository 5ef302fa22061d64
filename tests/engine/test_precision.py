"""The precision policy, case by case, without the hardware: Hardware values are written by hand."""

from __future__ import annotations

import pytest
import torch

from pipelines.config import load_config
from yolov2.engine.precision import (
    FLOAT32,
    Hardware,
    choose_precision,
    detect_hardware,
    slow_path_warnings,
    timeable_precisions,
)
from yolov2.errors import ConfigError

AVX2 = Hardware("cpu", "AVX2")
AVX512_NO_BF16 = Hardware("cpu", "AVX512")  # Skylake-X: AVX-512 but bf16 would be emulated
AVX512_BF16 = Hardware("cpu", "AVX512", avx512_bf16=True)
AMX = Hardware("cpu", "AVX512", avx512_bf16=True, amx=True)
CAPPED_TO_AVX2 = Hardware("cpu", "AVX2", avx512_bf16=True)  # ATEN_CPU_CAPABILITY=avx2 on a bf16 machine
ARM = Hardware("cpu", "DEFAULT")
CUDA_BF16 = Hardware("cuda", "AVX2", cuda_bf16=True, device_name="A100")
CUDA_OLD = Hardware("cuda", "AVX2", cuda_bf16=False, device_name="V100")


@pytest.mark.parametrize(
    "hw, amp, channels_last",
    [
        (AVX2, "off", True),
        (AVX512_NO_BF16, "off", True),
        (AVX512_BF16, "bf16", True),
        (AMX, "bf16", True),
        (CAPPED_TO_AVX2, "off", True),
        (ARM, "off", False),
        (CUDA_BF16, "bf16", True),
        (CUDA_OLD, "fp16", True),
    ],
)
def test_auto_policy(hw: Hardware, amp: str, channels_last: bool) -> None:
    choice = choose_precision(hw)
    assert (choice.amp, choice.channels_last) == (amp, channels_last)
    assert "amp=auto" in choice.reason and "channels_last=auto" in choice.reason


def test_auto_reason_names_the_cpu_kind() -> None:
    assert "AVX2" in choose_precision(AVX2).reason
    assert "AMX" in choose_precision(AMX).reason
    assert "AVX512_BF16" in choose_precision(AVX512_BF16).reason
    assert "fp16" in choose_precision(CUDA_OLD).reason


@pytest.mark.parametrize("hw", [AVX2, AMX, CUDA_OLD])
def test_explicit_settings_are_honoured(hw: Hardware) -> None:
    choice = choose_precision(hw, "bf16", False)
    assert (choice.amp, choice.channels_last) == ("bf16", False)
    assert choose_precision(hw, "off", "auto").amp == "off"
    assert choose_precision(hw, "fp16", True).channels_last is True


def test_hardware_in_words() -> None:
    assert AMX.describe() == "CPU (AVX512, AVX512_BF16, AMX; bf16 native)"
    assert AVX2.describe() == "CPU (AVX2; bf16 emulated)"
    assert CAPPED_TO_AVX2.describe() == "CPU (AVX2, AVX512_BF16 unused at this capability; bf16 emulated)"
    assert CUDA_OLD.describe() == "CUDA V100 (without bf16)"


def test_slow_path_warnings() -> None:
    [warning] = slow_path_warnings(AVX2, "bf16", "auto")
    assert warning.startswith("train.amp=bf16 on a CPU without native bf16 (AVX2)") and "use train.amp=auto" in warning
    assert slow_path_warnings(AVX2, "auto", "auto") == []
    assert slow_path_warnings(AMX, "bf16", True) == []
    assert slow_path_warnings(CUDA_BF16, "bf16", True) == []
    assert "GPU without bf16" in slow_path_warnings(CUDA_OLD, "bf16", "auto")[0]
    assert "fp16" in slow_path_warnings(AVX512_BF16, "fp16", "auto")[0]
    assert "channels_last=false" in slow_path_warnings(AVX2, "off", False, setting="evaluate")[0]
    assert slow_path_warnings(ARM, "off", False) == []  # NCHW is auto's pick there


def test_detect_hardware_matches_torch() -> None:
    hw = detect_hardware("cpu")
    assert hw.device_type == "cpu"
    assert hw.cpu_capability == torch.backends.cpu.get_cpu_capability()
    assert hw.avx512_bf16 == torch.cpu._is_avx512_bf16_supported()
    assert hw.native_bf16 == ((hw.avx512_bf16 or hw.amx) and hw.cpu_capability == "AVX512")


def test_float32_is_the_plain_path() -> None:
    assert (FLOAT32.amp, FLOAT32.channels_last) == ("off", False)
    assert FLOAT32.memory_format == torch.contiguous_format
    with FLOAT32.autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with choose_precision(AMX).autocast("cpu"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_config_accepts_auto_and_rejects_unknown_values() -> None:
    cfg = load_config(None)
    assert (cfg.train.amp, cfg.train.channels_last, cfg.evaluate.amp, cfg.evaluate.channels_last) == ("auto",) * 4
    cfg = load_config(None, ["train.amp=off", "train.channels_last=false", "evaluate.amp=bf16"])
    assert (cfg.train.amp, cfg.train.channels_last, cfg.evaluate.amp) == ("off", False, "bf16")
    with pytest.raises(ConfigError, match=r"train\.amp must be one of 'auto', 'off', 'bf16', 'fp16', got 'fast'"):
        load_config(None, ["train.amp=fast"])
    with pytest.raises(ConfigError, match=r"train\.channels_last must be bool or one of 'auto', got 'maybe'"):
        load_config(None, ["train.channels_last=maybe"])


def test_timeable_precisions() -> None:
    names = lambda hw: [p.describe() for p in timeable_precisions(hw)]  # noqa: E731
    cpu = ["float32, NCHW", "float32, channels_last", "bf16 autocast, NCHW", "bf16 autocast, channels_last"]
    assert names(AVX2) == cpu and names(AMX) == cpu  # emulated bf16 is timed too: that is the point
    assert names(CUDA_BF16) == cpu + ["fp16 autocast, NCHW", "fp16 autocast, channels_last"]
    assert names(CUDA_OLD) == cpu[:2] + ["fp16 autocast, NCHW", "fp16 autocast, channels_last"]
