"""Fault injection for the fault tests and benchmarks/reliability.py: one plan, passed explicitly.

A :class:`FaultPlan` says which failure to cause where; the default plan causes none, and every hook
below returns at once for it. Stages receive the plan through their context (``ctx.faults``); nothing
else in the code reads the ``YOLOV2_FAULT_*`` / ``YOLOV2_TRAIN_TRACE_DIR`` environment variables: the
command-line entry points turn them into a plan with :meth:`FaultPlan.from_env`, so that a test can
drive a whole ``python pipelines/full.py`` run in a subprocess.

Each fault fires once: it leaves a marker file in ``marker_dir`` and does nothing when the marker exists,
so the retry (Ray's task retry, Ray Train's restart) succeeds.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ENV_TRAIN_STEP = "YOLOV2_FAULT_TRAIN_STEP"
ENV_TRAIN_DIR = "YOLOV2_FAULT_TRAIN_DIR"
ENV_TRAIN_RANK = "YOLOV2_FAULT_TRAIN_RANK"
ENV_TRAIN_KIND = "YOLOV2_FAULT_TRAIN_KIND"
ENV_SHARD_EXIT_DIR = "YOLOV2_FAULT_SHARD_DIR"
ENV_SHARD_HOLD_DIR = "YOLOV2_FAULT_SHARD_HOLD_DIR"
ENV_TRAIN_TRACE_DIR = "YOLOV2_TRAIN_TRACE_DIR"
SHARD_HOLD_SECONDS = 120.0  # a held shard task gives up after this, so a broken test cannot hang


@dataclass(frozen=True)
class FaultPlan:
    """Which failures to cause. All ``None``: none (the default everywhere)."""

    # train: rank `train_rank` fails once when it starts optimizer step `train_step`
    train_step: int | None = None
    train_rank: int = 0
    train_kind: Literal["raise", "sigkill"] = "raise"  # sigkill: the worker dies with no Python cleanup
    train_marker_dir: str | None = None
    # shard: the first attempt at each shard dies after writing its data, before the rename
    shard_kind: Literal["exit", "hold"] | None = None  # hold: write the pid to <shard>.pid, wait to be killed
    shard_marker_dir: str | None = None
    # not a fault: each train rank appends every micro-batch's image ids and size to <dir>/batches-rank<r>.jsonl
    train_trace_dir: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> FaultPlan:
        """The plan the environment names (tests set it for a subprocess); the empty plan when none."""
        env = os.environ if environ is None else environ
        train_step = env.get(ENV_TRAIN_STEP)
        shard_kind: Literal["exit", "hold"] | None = None
        shard_dir = None
        if env.get(ENV_SHARD_EXIT_DIR):
            shard_kind, shard_dir = "exit", env[ENV_SHARD_EXIT_DIR]
        elif env.get(ENV_SHARD_HOLD_DIR):
            shard_kind, shard_dir = "hold", env[ENV_SHARD_HOLD_DIR]
        kind = env.get(ENV_TRAIN_KIND, "raise")
        if kind not in ("raise", "sigkill"):
            raise ValueError(f"{ENV_TRAIN_KIND}={kind!r}: expected raise or sigkill")
        return cls(
            train_step=int(train_step) if train_step else None,
            train_rank=int(env.get(ENV_TRAIN_RANK, "0")),
            train_kind="sigkill" if kind == "sigkill" else "raise",
            train_marker_dir=env.get(ENV_TRAIN_DIR) if train_step else None,
            shard_kind=shard_kind,
            shard_marker_dir=shard_dir,
            train_trace_dir=env.get(ENV_TRAIN_TRACE_DIR) or None,
        )


NO_FAULTS = FaultPlan()


def _first_time(marker: Path, content: str) -> bool:
    """True (and the marker written) the first time this fault is reached; False on every later attempt."""
    if marker.exists():
        return False
    marker.write_text(content)
    return True


def train_step_fault(plan: FaultPlan, rank: int, step: int) -> None:
    """Fail (raise, or SIGKILL this process) if the plan says this rank fails at this step, once."""
    if plan.train_step is None or plan.train_marker_dir is None or rank != plan.train_rank or step != plan.train_step:
        return
    if not _first_time(Path(plan.train_marker_dir) / f"train-step-{step}.failed", f"rank {rank} pid {os.getpid()}"):
        return
    if plan.train_kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"injected training failure at step {step}")


def shard_write_fault(plan: FaultPlan, shard_path: str) -> None:
    """The first attempt at ``shard_path`` dies here (after its data is written, before the rename)."""
    if plan.shard_kind is None or plan.shard_marker_dir is None:
        return
    marker = Path(plan.shard_marker_dir) / (shard_path.replace("/", "_") + ".attempted")
    if not _first_time(marker, "1"):
        return
    if plan.shard_kind == "exit":
        os._exit(1)
    pid_file = marker.with_suffix(".pid")
    tmp = pid_file.with_name(pid_file.name + ".tmp")
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, pid_file)
    time.sleep(SHARD_HOLD_SECONDS)
    raise RuntimeError(
        f"fault hook: worker {os.getpid()} writing {shard_path} was not killed within {SHARD_HOLD_SECONDS:.0f} s"
    )
