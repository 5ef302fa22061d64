"""Killing a pipeline driver mid-run, for the tests that rerun the same command after it: wait for the kill
point, SIGKILL the driver, then end what its session left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from test_cluster_scripts import session_processes


def kill_driver_when(
    reached: Callable[[], object], driver: subprocess.Popen, log: Path, timeout: float, poll_s: float = 0.2
) -> None:
    """Poll ``reached()`` until it is truthy, then SIGKILL ``driver`` (started with ``start_new_session``).

    Fails, with the tail of the driver's ``log``, if the driver ends first or the kill point takes longer than
    ``timeout`` seconds. Whatever happens, the driver's session is cleaned up: a killed driver's raylet and
    workers go with it, but Ray's DashboardAgent and RuntimeEnvAgent were seen to outlive it (minutes).
    """
    try:
        deadline = time.monotonic() + timeout
        while not reached():
            if driver.poll() is not None:
                raise AssertionError(f"the driver ended ({driver.returncode}) before the kill point:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"kill point not reached in {timeout}s:\n{_tail(log)}")
            time.sleep(poll_s)
        os.kill(driver.pid, signal.SIGKILL)
        assert driver.wait(timeout=30) == -signal.SIGKILL
    finally:
        time.sleep(5)
        for pid in session_processes(driver.pid):
            os.kill(pid, signal.SIGKILL)


def _tail(log: Path) -> str:
    return log.read_text()[-4000:]
