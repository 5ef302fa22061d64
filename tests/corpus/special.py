"""Special files for the bad-input tests: a FIFO, a socket, a link to a device, a folder, where a file is expected.

Why these: opening a FIFO blocks until a writer comes, ``/dev/zero`` never ends, a socket cannot be
opened at all. A reader that opens any of them hangs or exhausts memory instead of rejecting the file,
so the tests also run the readers under :func:`finishes_within`, which fails a hang instead of
inheriting it. Block devices are left out: a CI container need not have one to link to.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

Special = Literal["fifo", "socket", "dev_null", "dev_zero", "directory"]
SPECIAL_KINDS: dict[Special, str] = {  # what the readers must call each one
    "fifo": "a named pipe (FIFO)",
    "socket": "a socket",
    "dev_null": "a character device",
    "dev_zero": "a character device",
    "directory": "a directory",
}
T = TypeVar("T")


def make_special(path: str | Path, kind: Special) -> Path:
    """Create ``path`` as a special file of ``kind`` (replacing a file already there)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.is_file():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        _bind_unix_socket(path)
    elif kind in ("dev_null", "dev_zero"):
        os.symlink(f"/dev/{kind[4:]}", path)
    elif kind == "directory":
        path.mkdir()
    else:
        raise ValueError(f"unknown special file kind {kind!r}")
    return path


def _bind_unix_socket(path: Path) -> None:
    """Leave a socket file at ``path``. Bound through ``/proc/self/fd/<folder>/<name>``: a socket path is
    limited to 108 bytes, and pytest's temporary folders can be longer."""
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(f"/proc/self/fd/{folder}/{path.name}")
    finally:
        os.close(folder)


def finishes_within(seconds: float, fn: Callable[[], T]) -> T:
    """``fn()``'s result or exception, or an AssertionError when it is still running after ``seconds``
    (it runs on a daemon thread, so a reader blocked on a FIFO cannot keep the test process alive)."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the caller
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise AssertionError(f"still running after {seconds} s: a reader blocked on a special file?")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]
