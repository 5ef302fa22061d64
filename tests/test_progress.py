"""yolov2.progress: throttled progress lines with rate and ETA, driven by a fake clock (no sleeps)."""

from __future__ import annotations

import pytest

from yolov2.progress import Progress, format_bytes, format_duration, track


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _progress(total: float | None, unit: str = "images", interval: float = 5.0, **kwargs):
    clock, lines = FakeClock(), []
    return Progress("shard", total, unit, interval=interval, clock=clock, emit=lines.append, **kwargs), clock, lines


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0, "0:00:00"),
        (0.4, "0:00:00"),
        (65, "0:01:05"),
        (3723, "1:02:03"),
        (97200, "27:00:00"),
        (-3, "0:00:00"),
        (float("inf"), "?"),
        (float("nan"), "?"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_format_bytes():
    assert [format_bytes(n) for n in (0, 512, 1536, 460 * 2**20, 18 * 2**30, 3 * 2**40)] == [
        "0 B",
        "512 B",
        "1.5 KiB",
        "460.0 MiB",
        "18.0 GiB",
        "3.0 TiB",
    ]


def test_first_update_prints_at_once_without_rate_or_eta():
    progress, _, lines = _progress(1720)
    progress.update(0)
    assert lines == ["[shard] 0/1720 images (0%) elapsed 0:00:00"]


def test_lines_are_throttled_to_the_interval():
    progress, clock, lines = _progress(100, interval=5.0)
    progress.update(0)
    for _ in range(9):  # 4.5 s of updates: all within the interval
        clock.now += 0.5
        progress.advance()
    assert len(lines) == 1
    clock.now += 0.5  # 5 s after the first line
    progress.advance()
    assert len(lines) == 2 and lines[1].startswith("[shard] 10/100 images (10%)")
    clock.now += 4.9
    progress.advance()
    assert len(lines) == 2


def test_rate_and_eta_come_from_the_work_since_the_first_update():
    progress, clock, lines = _progress(1720)
    progress.update(0)
    clock.now += 65
    progress.update(800)
    # 800 images in 65 s: 12.3/s, the 920 left take 74.75 s
    assert lines[-1] == "[shard] 800/1720 images (46%) 12.3 images/s, elapsed 0:01:05, ETA 0:01:15"


def test_resumed_work_does_not_count_towards_the_rate():
    progress, clock, lines = _progress(1000, unit="B", desc="voc.tar")
    progress.update(600)  # a resumed download starts at its offset
    clock.now += 10
    progress.update(700)  # 10 B/s: 300 B left, 30 s
    assert lines == [
        "[shard] voc.tar 600 B/1000 B (60%) elapsed 0:00:00",
        "[shard] voc.tar 700 B/1000 B (70%) 10 B/s, elapsed 0:00:10, ETA 0:00:30",
    ]


def test_close_prints_the_final_line_once_without_eta():
    progress, clock, lines = _progress(36)
    with progress:
        clock.now += 1
        progress.advance(36)
    clock.now += 1
    progress.close()
    assert lines == [
        "[shard] 0/36 images (0%) elapsed 0:00:00",
        "[shard] 36/36 images (100%) 36.0 images/s, elapsed 0:00:01",
    ]


def test_close_does_not_repeat_a_line_just_printed():
    progress, clock, lines = _progress(10, interval=0)
    progress.update(0)
    clock.now += 2
    progress.update(10)
    progress.close()
    assert len(lines) == 2 and lines[-1] == "[shard] 10/10 images (100%) 5.00 images/s, elapsed 0:00:02"


def test_an_error_inside_the_block_ends_without_a_final_line():
    progress, clock, lines = _progress(10)
    with pytest.raises(RuntimeError), progress:
        clock.now += 1
        progress.advance(3)
        raise RuntimeError("task failed")
    progress.close()
    assert lines == ["[shard] 0/10 images (0%) elapsed 0:00:00"]


def test_unknown_total_has_count_and_rate_but_no_eta():
    progress, clock, lines = _progress(None, unit="runs", interval=0)
    progress.update(0)
    clock.now += 4
    progress.advance(2)
    assert lines == ["[shard] 0 runs elapsed 0:00:00", "[shard] 2 runs 0.50 runs/s, elapsed 0:00:04"]
    assert all("ETA" not in line and "%" not in line for line in lines)


def test_zero_total_is_complete():
    progress, _, lines = _progress(0)
    with progress:
        pass
    assert lines == ["[shard] 0/0 images (100%) elapsed 0:00:00"]


def test_track_advances_as_each_item_is_finished():
    progress, clock, lines = _progress(3, interval=0)
    seen = []
    for item in track(["a", "b", "c"], progress):
        assert progress.done == len(seen)  # the item being worked on is not counted yet
        seen.append(item)
        clock.now += 1
    progress.close()
    assert seen == ["a", "b", "c"] and progress.done == 3
    assert lines[-1] == "[shard] 3/3 images (100%) 1.00 images/s, elapsed 0:00:03"


def test_default_sink_is_stderr_looked_up_at_each_call(capsys):
    Progress("anchors", 2, "runs").update(1)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "[anchors] 1/2 runs (50%) elapsed 0:00:00\n"


def test_tick_repeats_the_current_line_only_after_a_silent_interval():
    progress, clock, lines = _progress(100)
    progress.tick()
    assert lines == []  # not started: nothing to repeat
    progress.update(10)
    clock.now += 4
    progress.tick()
    assert len(lines) == 1
    clock.now += 1
    progress.tick()  # the work is slow, not stuck: same count, time moves on
    assert lines[-1] == "[shard] 10/100 images (10%) elapsed 0:00:05"
    progress.close()
    clock.now += 60
    progress.tick()
    assert len(lines) == 2, "closed: no more lines"


def test_heartbeat_thread_prints_while_no_update_comes_and_stops_at_close(monkeypatch):
    import threading

    from yolov2 import progress as module

    monkeypatch.setattr(module, "MIN_HEARTBEAT_S", 0.001)  # the thread wakes every 1 ms of real time
    clock, lines, beat = FakeClock(), [], threading.Event()

    def emit(line: str) -> None:
        lines.append(line)
        if len(lines) == 2:
            beat.set()

    progress = Progress(
        "evaluate", 60, "images", desc="inference", interval=0.002, clock=clock, emit=emit, heartbeat=True
    )
    with progress:
        clock.now += 30  # e.g. the actors still load the model: no update for 30 s
        assert beat.wait(10), "no heartbeat line"
    count = len(lines)
    clock.now += 30
    threading.Event().wait(0.05)
    assert lines[:2] == [
        "[evaluate] inference 0/60 images (0%) elapsed 0:00:00",
        "[evaluate] inference 0/60 images (0%) elapsed 0:00:30",
    ]
    assert len(lines) == count == 2, "the heartbeat ends with the block (the final state was already shown)"
    assert not any(t.name == "progress-evaluate" for t in threading.enumerate())
