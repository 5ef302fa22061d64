"""The metric sender: training never waits on MLflow; values held while the server is down are sent
afterwards in order and each once; what is unsent at close comes back to the caller."""

from __future__ import annotations

import threading
import time

from pipelines.tracking.sender import MetricSender


class FlakyServer:
    """Stands in for MLflow: accepts batches while up, refuses them (as a dead server would) while down."""

    def __init__(self) -> None:
        self.up = threading.Event()
        self.up.set()
        self.received: list[tuple[str, float, int, int]] = []

    def send(self, chunk) -> None:
        if not self.up.is_set():
            raise ConnectionError("connection refused")
        self.received.extend(chunk)


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert condition()


def test_values_held_during_an_outage_arrive_afterwards_in_order_each_once():
    server = FlakyServer()
    sender = MetricSender(server.send, reachable=server.up.is_set, retry_seconds=0.05)
    sender.add({"loss": 1.0}, 1)
    _wait_for(lambda: len(server.received) == 1)
    server.up.clear()
    started = time.monotonic()
    for step in range(2, 1202):  # more than one request's worth while down
        sender.add({"loss": float(step), "lr": 0.1}, step)
    assert time.monotonic() - started < 1.0  # add() never waits for the server
    time.sleep(0.2)
    assert len(server.received) == 1 and sender.delivery.outages == 1
    server.up.set()
    assert sender.close(timeout=10) == []
    assert [(k, s) for k, _, _, s in server.received] == [("loss", 1)] + [
        (k, s) for s in range(2, 1202) for k in ("loss", "lr")
    ]
    assert sender.delivery.to_dict() == {"sent": 2401, "sent_late": 2400, "outages": 1, "unsent": 0}


def test_values_unsent_at_close_are_returned():
    server = FlakyServer()
    server.up.clear()
    sender = MetricSender(server.send, reachable=lambda: True, retry_seconds=0.05)  # /health fine, logging fails
    sender.add({"loss": 2.0}, 7)
    unsent = sender.close(timeout=0.3)
    assert [(k, v, s) for k, v, _, s in unsent] == [("loss", 2.0, 7)]
    assert server.received == [] and sender.delivery.unsent == 1 and sender.delivery.sent == 0
