"""Which numeric precision and memory layout to train and infer in, chosen from the hardware.

bf16 autocast pays only where the hardware computes in bf16: CUDA GPUs that support it, and CPUs with
AVX512_BF16 or AMX. On any other CPU oneDNN emulates it, and a step is an order of magnitude slower than
in float32 (``benchmarks/train.py`` measures each precision on the machine at hand). So ``auto`` (the
default of ``train.amp``, ``train.channels_last``, ``evaluate.amp`` and ``evaluate.channels_last``) picks:

* CUDA with bf16: bf16 autocast, channels_last;
* CUDA without bf16 (before Ampere): fp16 autocast (the training loop adds a GradScaler), channels_last;
* CPU with native bf16 (AVX512_BF16 or AMX): bf16 autocast, channels_last;
* any other CPU: float32; channels_last on x86 CPUs with AVX2 or AVX-512, where it measured faster than
  NCHW, and NCHW elsewhere (unmeasured).

:func:`detect_hardware` reads the machine; :func:`choose_precision` is a pure function of what it found, so
every case is testable without the hardware. An explicit setting is always honoured;
:func:`slow_path_warnings` says when it is the slow one.

Setting ``ATEN_CPU_CAPABILITY=avx2`` caps torch's kernels below AVX-512, and the CPU then counts as AVX2
here too: with ``ONEDNN_MAX_CPU_ISA=AVX2`` beside it, an AVX-512 machine behaves as an AVX2 one.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import torch

Amp = Literal["off", "bf16", "fp16"]
AmpSetting = Literal["auto", "off", "bf16", "fp16"]
LayoutSetting = bool | Literal["auto"]

# torch.backends.cpu.get_cpu_capability() values on which channels_last measured faster than NCHW in float32
CHANNELS_LAST_CPU_CAPABILITIES = ("AVX2", "AVX512")
# How much slower emulated bf16 autocast measured than float32 on AVX2 CPUs (issue 13, benchmarks/train.py)
EMULATED_BF16_SLOWDOWN = "about 10x"


@dataclass(frozen=True)
class Hardware:
    """What the precision choice depends on, as detected (or written by hand in tests)."""

    device_type: str  # "cpu" or "cuda"
    cpu_capability: str  # torch.backends.cpu.get_cpu_capability(): "DEFAULT", "AVX2", "AVX512", "SVE256", ...
    avx512_bf16: bool = False  # the CPU has the AVX512_BF16 instructions
    amx: bool = False  # the CPU has AMX tiles (Sapphire Rapids and later)
    cuda_bf16: bool = False  # torch.cuda.is_bf16_supported() on the device
    device_name: str = ""

    @property
    def native_bf16(self) -> bool:
        """Whether bf16 math runs in hardware on this device (not emulated)."""
        if self.device_type == "cuda":
            return self.cuda_bf16
        return (self.avx512_bf16 or self.amx) and self.cpu_capability.startswith("AVX512")

    def describe(self) -> str:
        if self.device_type == "cuda":
            return f"CUDA {self.device_name or 'GPU'} ({'with' if self.cuda_bf16 else 'without'} bf16)"
        extras = [name for name, present in (("AVX512_BF16", self.avx512_bf16), ("AMX", self.amx)) if present]
        if extras and not self.cpu_capability.startswith("AVX512"):  # ATEN_CPU_CAPABILITY caps torch below them
            extras = [f"{' and '.join(extras)} unused at this capability"]
        flags = f"{self.cpu_capability}{', ' + ', '.join(extras) if extras else ''}"
        return f"CPU ({flags}; bf16 {'native' if self.native_bf16 else 'emulated'})"


@dataclass(frozen=True)
class Precision:
    """The resolved choice: autocast dtype (or off), memory layout, and why."""

    amp: Amp
    channels_last: bool
    reason: str

    def describe(self) -> str:
        dtype = {"off": "float32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}[self.amp]
        return f"{dtype}, {'channels_last' if self.channels_last else 'NCHW'}"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self, device: torch.device | str) -> contextlib.AbstractContextManager:
        """Autocast for this precision on ``device`` (a no-op in float32)."""
        return autocast(self.amp, torch.device(device))


FLOAT32 = Precision("off", False, "float32, NCHW: the reference")


def autocast(amp: Amp, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on the device, or nothing for ``off``."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def detect_hardware(device: torch.device | str = "cpu") -> Hardware:
    """Read the capabilities of ``device`` (the CPU's are read even for CUDA, for reports)."""
    device = torch.device(device)
    cpu = torch.cpu
    cpu_capability = torch.backends.cpu.get_cpu_capability()
    avx512_bf16 = bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())
    amx = bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    if device.type == "cuda":
        with torch.cuda.device(device):  # is_bf16_supported() asks about the current device, not cuda:N
            native = torch.cuda.is_bf16_supported(including_emulation=False)  # the default counts emulated bf16
        return Hardware(
            "cuda", cpu_capability, avx512_bf16, amx, cuda_bf16=native, device_name=torch.cuda.get_device_name(device)
        )
    return Hardware("cpu", cpu_capability, avx512_bf16, amx)


def auto_amp(hw: Hardware) -> tuple[Amp, str]:
    """The fastest autocast choice for the hardware, with the reason in words."""
    if hw.device_type == "cuda":
        if hw.cuda_bf16:
            return "bf16", "CUDA with bf16 support"
        return "fp16", "CUDA without bf16 support: fp16 with a gradient scaler"
    if hw.native_bf16:
        return "bf16", f"CPU with native bf16 ({'AMX' if hw.amx else 'AVX512_BF16'})"
    return "off", (
        f"CPU without native bf16 ({hw.cpu_capability}): bf16 would be emulated, "
        f"{EMULATED_BF16_SLOWDOWN} slower than float32"
    )


def auto_channels_last(hw: Hardware) -> bool:
    """channels_last where it measured faster: every CUDA GPU and bf16 CPU here, float32 on AVX2/AVX-512."""
    return hw.device_type == "cuda" or hw.native_bf16 or hw.cpu_capability in CHANNELS_LAST_CPU_CAPABILITIES


def choose_precision(hw: Hardware, amp: AmpSetting = "auto", channels_last: LayoutSetting = "auto") -> Precision:
    """Resolve ``auto`` settings for ``hw``; explicit settings are kept as given."""
    reasons = []
    if amp == "auto":
        amp, why = auto_amp(hw)
        reasons.append(f"amp=auto: {why}")
    else:
        reasons.append(f"amp={amp} as configured")
    if channels_last == "auto":
        channels_last = auto_channels_last(hw)
        reasons.append(f"channels_last=auto: {'faster' if channels_last else 'not measured faster'} on {hw.describe()}")
    else:
        reasons.append(f"channels_last={channels_last} as configured")
    return Precision(amp, bool(channels_last), "; ".join(reasons))


def timeable_precisions(hw: Hardware) -> list[Precision]:
    """Every precision and layout worth timing on ``hw`` (``yolov2 env --bench``, ``benchmarks/``): float32, bf16
    (emulated on some CPUs: timing that is the point; on CUDA only where supported) and fp16 on CUDA, each in
    NCHW and channels_last, float32 first."""
    amps: list[Amp] = ["off"]
    if hw.device_type == "cpu" or hw.cuda_bf16:
        amps.append("bf16")
    if hw.device_type == "cuda":
        amps.append("fp16")
    return [choose_precision(hw, amp, channels_last) for amp in amps for channels_last in (False, True)]


def slow_path_warnings(
    hw: Hardware, amp: AmpSetting, channels_last: LayoutSetting = "auto", setting: str = "train"
) -> list[str]:
    """Warnings for explicit choices that are slow on ``hw`` (empty for ``auto``). ``setting``: the config section."""
    warnings = []
    if amp == "bf16" and not hw.native_bf16:
        where = (
            f"a CPU without native bf16 ({hw.cpu_capability})"
            if hw.device_type == "cpu"
            else "a GPU without bf16 support"
        )
        warnings.append(
            f"{setting}.amp=bf16 on {where}: expect {EMULATED_BF16_SLOWDOWN} slower than float32; "
            f"use {setting}.amp=auto"
        )
    if amp == "fp16" and hw.device_type == "cpu":
        warnings.append(
            f"{setting}.amp=fp16 on a CPU: fp16 autocast is emulated there and slower than float32; "
            f"use {setting}.amp=auto"
        )
    if channels_last is False and auto_channels_last(hw):
        warnings.append(
            f"{setting}.channels_last=false on {hw.describe()}, where channels_last measured faster; "
            f"use {setting}.channels_last=auto"
        )
    return warnings
