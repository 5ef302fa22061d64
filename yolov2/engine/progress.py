"""Training progress a person can trust: a line right after the first optimizer step, then every ``log_every``
steps and at least every ``interval`` seconds of wall time, even while one slow step is still running.

Each line has the step, the epoch, images/s, the share of time spent waiting for data, the loss and an ETA
for the whole run, so slow is told apart from stuck within seconds. :class:`TrainProgress` decides and
formats; it takes its clock and its output as arguments, so tests drive it without real waits.
:class:`Ticker` calls :meth:`TrainProgress.heartbeat` from a thread while the loop is busy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from yolov2.progress import format_duration


@dataclass(frozen=True)
class StepReport:
    """One finished optimizer step, as the training loop measured it."""

    step: int  # optimizer steps done, this one included
    epoch: int  # the epoch it belongs to, 0-based
    images: int  # images in the step, over all ranks
    seconds: float  # wall time of the step
    data_wait: float  # of which waiting for the next batch
    loss: float  # mean total loss of its micro-batches


class TrainProgress:
    """Prints ``[train] step 50/2800 epoch 1/28 | 9.8 img/s | data 4% | loss 12.3 | 1.63 s/step | ETA 1:14:02``."""

    def __init__(
        self,
        total_steps: int,
        epochs: int,
        log_every: int,
        *,
        interval: float = 30.0,
        start_step: int = 0,
        clock: Callable[[], float] = time.monotonic,
        emit: Callable[[str], None] = print,
        label: str = "train",
    ) -> None:
        self.label = label  # the line's prefix: the stage
        self.total_steps, self.epochs, self.log_every, self.interval = total_steps, epochs, max(1, log_every), interval
        self.clock, self.emit = clock, emit
        self.started = clock()
        self.last_line = self.started
        self.start_step = start_step  # steps already done when this process started (a resumed run)
        self.last_step = start_step
        self.last_step_time = self.started  # when the last step finished (or training started)
        self.first_done: tuple[int, float] | None = None  # (step, time) after the first step: the ETA's origin
        self.window: list[StepReport] = []
        self.lock = threading.Lock()

    def step_done(self, report: StepReport) -> str | None:
        """Record a step; print and return its line when one is due."""
        with self.lock:
            now = self.clock()
            self.window.append(report)
            self.last_step, self.last_step_time = report.step, now
            first = self.first_done is None
            if first:
                self.first_done = (report.step, now)
            due = (
                first
                or report.step % self.log_every == 0
                or report.step >= self.total_steps
                or now - self.last_line >= self.interval
            )
            if not due:
                return None
            line = self._step_line(report, now)
            self.window = []
            return self._print(line, now)

    def heartbeat(self) -> str | None:
        """Print a 'still running' line when one step has run, and nothing was printed, for ``interval`` seconds.
        (Steps that finish are reported by :meth:`step_done`, which keeps to the same interval.)"""
        with self.lock:
            now = self.clock()
            if now - max(self.last_line, self.last_step_time) < self.interval:
                return None
            running = format_duration(now - self.last_step_time)
            eta = self._eta(now)
            line = (
                f"[{self.label}] step {self.last_step + 1}/{self.total_steps} running for {running} "
                f"| elapsed {format_duration(now - self.started)}"
                + (f" | ETA {format_duration(eta)}" if eta is not None else " | ETA after the first step")
            )
            return self._print(line, now)

    def _step_line(self, report: StepReport, now: float) -> str:
        assert self.first_done is not None  # step() sets it before the first line
        seconds = sum(r.seconds for r in self.window)
        images = sum(r.images for r in self.window)
        wait = sum(r.data_wait for r in self.window)
        eta = self._eta(now)
        return (
            f"[{self.label}] step {report.step}/{self.total_steps} epoch {report.epoch + 1}/{self.epochs} "
            f"| {images / max(seconds, 1e-9):.1f} img/s | data {100 * wait / max(seconds, 1e-9):.0f}% "
            f"| loss {report.loss:.4g} | {seconds / len(self.window):.2f} s/step "
            f"| elapsed {format_duration(now - self.started)} | ETA {format_duration(eta or 0.0)}"
            + (" (from the first step, warm-up included)" if report.step == self.first_done[0] else "")
        )

    def _eta(self, now: float) -> float | None:
        """Seconds left: the remaining steps at the mean wall time per step since the first one (which pays
        for warm-up); validation and checkpoints between epochs count, as they will again."""
        if self.first_done is None:
            return None
        first_step, first_time = self.first_done
        remaining = max(0, self.total_steps - self.last_step)
        if self.last_step > first_step:
            per_step = (now - first_time) / (self.last_step - first_step)
        else:
            per_step = first_time - self.started  # only the first step so far: its own time
        return remaining * per_step

    def _print(self, line: str, now: float) -> str:
        self.last_line = now
        self.emit(line)
        return line


class Ticker:
    """Calls ``fn`` every ``period`` seconds on a daemon thread while the ``with`` block runs."""

    def __init__(self, fn: Callable[[], object], period: float = 1.0) -> None:
        self.fn, self.period = fn, period
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="progress-ticker", daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.period):
            self.fn()

    def __enter__(self) -> Ticker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=self.period + 1.0)
