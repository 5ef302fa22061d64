"""Training metrics to MLflow without ever blocking training on the server.

A background thread sends the values; while the server does not answer they stay in memory (training
goes on) and are sent, in order and each once, when it answers again. MLflow's own client retries a
failed request with growing back-off for minutes, so the thread first asks the server's ``/health``
with a short timeout and only then calls it. What is still unsent when training ends, after a bounded
wait, is returned to the caller, which keeps it in a local file and reports it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)

# (key, value, timestamp in ms when measured, step)
MetricValue = tuple[str, float, int, int]
CHUNK = 500  # values per request (MLflow's log_batch accepts at most 1000 metrics)


@dataclass
class Delivery:
    """What became of the values given to a :class:`MetricSender`."""

    sent: int = 0  # values the server accepted
    sent_late: int = 0  # of those, values held back while the server was unreachable
    outages: int = 0  # times the server stopped answering
    unsent: int = 0  # values still unsent at close (kept locally by the caller)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MetricSender:
    """Buffers metric values and sends them from a background thread; see the module docstring."""

    def __init__(
        self, send: Callable[[list[MetricValue]], None], reachable: Callable[[], bool], retry_seconds: float = 1.0
    ) -> None:
        self._send, self._reachable, self._retry_seconds = send, reachable, retry_seconds
        self._pending: list[MetricValue] = []
        self._late = 0  # values sent since the current outage ended, until the backlog is gone
        self._down = False
        self._closing = False
        self._cond = threading.Condition()
        self.delivery = Delivery()
        self._thread = threading.Thread(target=self._run, name="mlflow-metrics", daemon=True)
        self._thread.start()

    def add(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        with self._cond:
            self._pending.extend((k, float(v), now, step) for k, v in metrics.items())
            self._cond.notify()

    def close(self, timeout: float) -> list[MetricValue]:
        """Send what is left, waiting at most ``timeout`` seconds; returns the values still unsent."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        with self._cond:
            left, self._pending = self._pending, []
            self.delivery.unsent = len(left)
        return left

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending:
                    return
                chunk = self._pending[:CHUNK]
            try:
                if not self._reachable():
                    raise ConnectionError("no answer on /health")
                self._send(chunk)
            except Exception as e:  # the server is down or failing: keep the values, try again shortly
                with self._cond:
                    if not self._down:
                        self._down, self._late = True, 0
                        self.delivery.outages += 1
                        log.warning("MLflow unreachable (%s): buffering metric values, training goes on", e)
                    self._cond.wait(self._retry_seconds)
                continue
            with self._cond:
                del self._pending[: len(chunk)]
                self.delivery.sent += len(chunk)
                if self._down:
                    self.delivery.sent_late += len(chunk)
                    self._late += len(chunk)
                    if not self._pending:
                        self._down = False
                        log.warning(
                            "MLflow reachable again: sent the %d metric values buffered during the outage", self._late
                        )
