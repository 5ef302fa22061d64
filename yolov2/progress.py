"""Progress lines for long steps: plain, throttled lines that read the same in a terminal and in a log file.

A bar redrawn with carriage returns (tqdm) turns into one unreadable line, or nothing, once the output
is a file or a pipe (a cluster job's log, ``make demo > log``). :class:`Progress` prints whole lines
instead, at most one per ``interval`` seconds, each with the rate and, when the total is known, the ETA::

    [shard] 800/1720 images (46%) 12.3 images/s, elapsed 0:01:05, ETA 0:01:15

Work that finishes in big pieces (a shard task, a k-means run, an actor's model load) can leave a minute
between updates: ``heartbeat=True`` then repeats the current line from a thread when ``interval`` seconds
passed without one, so the terminal never goes silent while the stage is alive.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TypeVar

T = TypeVar("T")

DEFAULT_INTERVAL_S = 5.0
MIN_HEARTBEAT_S = 1.0  # the heartbeat thread wakes at most this often, even with a shorter interval
BYTES_UNIT = "B"


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (``0:01:05``, ``1:02:03``, ``27:00:00``), rounded to the second; ``?`` when not finite."""
    if not math.isfinite(seconds):
        return "?"
    total = max(0, int(round(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def format_bytes(count: float) -> str:
    """Binary units, one decimal: ``512 B``, ``1.5 KiB``, ``438.9 MiB``."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _format_rate(rate: float) -> str:
    """Three significant figures at most, never scientific notation."""
    if rate >= 100:
        return f"{rate:.0f}"
    if rate >= 10:
        return f"{rate:.1f}"
    return f"{rate:.2f}"


def print_to_stderr(line: str) -> None:
    """The default sink. stderr (looked up at each call) keeps a stage script's stdout, its manifest, clean."""
    print(line, file=sys.stderr, flush=True)


class Progress:
    """Counts work done towards ``total`` (None: unknown) and prints a line at the first update, then at most
    every ``interval`` seconds, and a final one at :meth:`close`; with ``enabled=False`` it counts silently
    (so a caller with a ``progress`` flag needs no branches).

    The rate counts only the work done since the first update, so a resumed download (first update at its
    offset) gets an honest ETA. ``unit="B"`` prints amounts in KiB/MiB/GiB. As a context manager it starts
    with :meth:`start` and closes on a normal exit (not after an error: the error is the last word).
    ``heartbeat``: from :meth:`start` to :meth:`close`, a thread calls :meth:`tick` twice per ``interval``.
    Safe to update from several threads.
    """

    def __init__(
        self,
        label: str,
        total: int | float | None,
        unit: str = "items",
        *,
        desc: str = "",
        interval: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        emit: Callable[[str], None] = print_to_stderr,
        enabled: bool = True,
        heartbeat: bool = False,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.desc = desc
        self.interval = interval
        self.done: float = 0
        self._clock = clock
        self._emit = emit
        self._enabled = enabled
        self._started: float | None = None  # clock at the first update
        self._start_done: float = 0  # work already done at the first update
        self._last_emit: float | None = None
        self._emitted_done: float | None = None  # `done` shown by the last line
        self._closed = False
        self._lock = threading.RLock()
        self._heartbeat = heartbeat
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def start(self) -> Progress:
        """Start the clock and print the first line, unless an update already did; start the heartbeat."""
        with self._lock:
            if self._started is None:
                self.update(self.done)
            if self._heartbeat and self._ticker is None and not self._closed:
                self._ticker = threading.Thread(target=self._beat, name=f"progress-{self.label}", daemon=True)
                self._ticker.start()
        return self

    def update(self, done: int | float) -> None:
        """Set the amount done so far; prints when this is the first update or ``interval`` has passed."""
        with self._lock:
            now = self._clock()
            self.done = done
            if self._started is None:
                self._started, self._start_done = now, done
            if self._last_emit is None or now - self._last_emit >= self.interval:
                self._print(now)

    def advance(self, n: int | float = 1) -> None:
        """Add ``n`` to the amount done (see :meth:`update`)."""
        with self._lock:
            self.update(self.done + n)

    def tick(self) -> None:
        """Repeat the current line if none was printed for ``interval`` (what the heartbeat calls)."""
        with self._lock:
            if self._last_emit is not None and not self._closed:
                now = self._clock()
                if now - self._last_emit >= self.interval:
                    self._print(now)

    def close(self) -> None:
        """Stop the heartbeat; print the final line (unless the last line already showed this state). Later
        calls do nothing."""
        self._stop_heartbeat()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            now = self._clock()
            if self._started is None:
                self._started, self._start_done = now, self.done
            if self._emitted_done != self.done:
                self._print(now)

    def line(self, now: float) -> str:
        """The progress line for the state at clock ``now``."""
        elapsed = now - (self._started if self._started is not None else now)
        amount = self._amount(self.done)
        parts = [f"[{self.label}]"] + ([self.desc] if self.desc else [])
        if self.total is None:
            parts.append(amount if self.unit == BYTES_UNIT else f"{amount} {self.unit}")
        else:
            total = self._amount(self.total)
            share = 100.0 if self.total <= 0 else min(100.0, 100.0 * self.done / self.total)
            counts = f"{amount}/{total}" if self.unit == BYTES_UNIT else f"{amount}/{total} {self.unit}"
            parts.append(f"{counts} ({math.floor(share)}%)")
        stats = []
        rate = (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0
        if rate > 0:
            per_second = format_bytes(rate) if self.unit == BYTES_UNIT else f"{_format_rate(rate)} {self.unit}"
            stats.append(f"{per_second}/s")
        stats.append(f"elapsed {format_duration(elapsed)}")
        if self.total is not None and rate > 0 and self.done < self.total:
            stats.append(f"ETA {format_duration((self.total - self.done) / rate)}")
        return " ".join(parts) + " " + ", ".join(stats)

    def __enter__(self) -> Progress:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._stop_heartbeat()
            with self._lock:
                self._closed = True

    def _amount(self, value: float) -> str:
        if self.unit == BYTES_UNIT:
            return format_bytes(value)
        return str(int(value)) if float(value).is_integer() else f"{value:g}"

    def _beat(self) -> None:
        while not self._stop.wait(max(self.interval / 2, MIN_HEARTBEAT_S)):  # silences of 1.5 intervals at most
            self.tick()

    def _stop_heartbeat(self) -> None:
        self._stop.set()
        if self._ticker is not None and self._ticker is not threading.current_thread():
            self._ticker.join()

    def _print(self, now: float) -> None:
        self._last_emit, self._emitted_done = now, self.done
        if self._enabled:
            self._emit(self.line(now))


def track(items: Iterable[T], progress: Progress) -> Iterator[T]:
    """Yield ``items``, advancing ``progress`` by one as each is finished (when the next one is asked for)."""
    progress.start()
    for item in items:
        yield item
        progress.advance()
