"""Training progress lines, driven by a fake clock: no real waits."""

from __future__ import annotations

import threading

from yolov2.engine.progress import StepReport, Ticker, TrainProgress


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(total: int = 100, log_every: int = 10, interval: float = 30.0, start_step: int = 0):
    clock, lines = FakeClock(), []
    progress = TrainProgress(
        total, epochs=4, log_every=log_every, interval=interval, start_step=start_step, clock=clock, emit=lines.append
    )
    return progress, clock, lines


def step(progress: TrainProgress, clock: FakeClock, n: int, seconds: float = 2.0, wait: float = 0.5) -> str | None:
    clock.now += seconds
    return progress.step_done(
        StepReport(step=n, epoch=(n - 1) // 25, images=16, seconds=seconds, data_wait=wait, loss=10.0 / n)
    )


def test_first_line_right_after_the_first_step_with_step_time_and_eta() -> None:
    progress, clock, lines = make()
    clock.now += 3.0  # set-up before the first step counts into its time
    line = step(progress, clock, 1, seconds=5.0)
    assert lines == [line]
    assert line.startswith("[train] step 1/100 epoch 1/4 ")
    assert "3.2 img/s" in line and "data 10%" in line and "loss 10" in line and "5.00 s/step" in line
    assert line.endswith("ETA 0:13:12 (from the first step, warm-up included)")  # 99 steps left at its 8 s


def test_every_log_every_steps_and_eta_from_the_mean_since_the_first_step() -> None:
    progress, clock, lines = make()
    step(progress, clock, 1, seconds=8.0)
    for n in range(2, 10):
        assert step(progress, clock, n) is None  # 2 s apart: neither log_every nor 30 s reached
    line = step(progress, clock, 10)
    assert line is not None and line.startswith("[train] step 10/100 epoch 1/4 ")
    assert "8.0 img/s" in line and "data 25%" in line and "2.00 s/step" in line
    assert "ETA 0:03:00" in line  # 90 steps left at 2 s
    assert len(lines) == 2


def test_time_based_lines_between_log_every_steps() -> None:
    progress, clock, lines = make(log_every=1000)
    step(progress, clock, 1)
    printed = [step(progress, clock, n, seconds=7.0) for n in range(2, 12)]
    # a line once 30 s of wall time have passed since the last one: at 7 s per step, after 5 steps each time
    assert [n for n, line in zip(range(2, 12), printed) if line] == [6, 11]
    assert "[train] step 6/100" in lines[1] and "7.00 s/step" in lines[1]


def test_heartbeat_while_a_slow_step_runs() -> None:
    progress, clock, lines = make()
    clock.now += 10.0
    assert progress.heartbeat() is None  # 10 s: not yet due
    clock.now += 25.0
    line = progress.heartbeat()  # 35 s into the first step, nothing printed yet
    assert line == "[train] step 1/100 running for 0:00:35 | elapsed 0:00:35 | ETA after the first step"
    step(progress, clock, 1, seconds=40.0)  # the first step finishes after 75 s in all
    assert lines[-1].startswith("[train] step 1/100") and "ETA 2:03:45" in lines[-1]
    clock.now += 31.0
    line = progress.heartbeat()
    assert line is not None and line.startswith("[train] step 2/100 running for 0:00:31") and "ETA" in line
    clock.now += 5.0
    assert progress.heartbeat() is None  # printed 5 s ago


def test_no_heartbeat_while_steps_keep_finishing() -> None:
    progress, clock, lines = make(log_every=1000)
    step(progress, clock, 1)
    for n in range(2, 5):
        step(progress, clock, n, seconds=9.0)  # 27 s without a line, but each step finishes within seconds
    clock.now += 4.0
    assert progress.heartbeat() is None  # 31 s since the last line, 4 s into the running step: not stuck
    assert len(lines) == 1


def test_last_step_always_printed_and_resumed_runs_count_from_their_step() -> None:
    progress, clock, lines = make(total=50, log_every=1000, start_step=40)
    step(progress, clock, 41)
    assert lines[-1].startswith("[train] step 41/50") and "ETA 0:00:18" in lines[-1]
    for n in range(42, 50):
        step(progress, clock, n)
    assert len(lines) == 1
    step(progress, clock, 50)
    assert lines[-1].startswith("[train] step 50/50") and "ETA 0:00:00" in lines[-1]


def test_ticker_calls_until_the_block_ends() -> None:
    calls: list[int] = []
    twice = threading.Event()

    def tick() -> None:
        calls.append(1)
        if len(calls) >= 2:
            twice.set()

    with Ticker(tick, period=0.01) as ticker:
        assert twice.wait(timeout=5)
    assert not ticker.thread.is_alive()  # joined: no call after the block
