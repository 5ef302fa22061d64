"""One writer per stage output: a second run on the same workspace waits for the first (pipelines/dag.py)."""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pipelines.workspace import Workspace

log = logging.getLogger(__name__)

LOCK_WAIT_SECONDS = 6 * 3600.0  # how long a second run waits for a stage output another run is writing


class StageError(RuntimeError):
    """A stage cannot run (for example its upstream output is missing, or another run holds its lock)."""


@contextmanager
def stage_lock(workspace: Workspace, stage: str, fp: str, wait_seconds: float) -> Iterator[None]:
    """One writer per stage output: a second run on the same workspace waits (or fails after ``wait_seconds``).

    An ``flock`` on ``<workspace>/locks/<stage>-<fingerprint>.lock``: the OS releases it when the holder
    dies, so a killed run never leaves a stale lock. Object-store workspaces have no such lock (documented).
    """
    if not workspace.is_local:
        yield
        return
    folder = workspace.local_path("locks")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stage}-{fp}.lock"
    with open(path, "a+") as handle:
        deadline = time.monotonic() + wait_seconds
        announced = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StageError(
                        f"stage {stage}: its output {stage}/{fp} is being written by another run on this workspace "
                        f"(lock {path}); gave up after {wait_seconds:.0f}s"
                    ) from None
                if not announced:
                    log.warning("stage %s: another run is writing %s/%s; waiting for it", stage, stage, fp)
                    announced = True
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
