"""Small file I/O every layer shares: atomic writes and the Darknet ``.names`` file.

Atomic writes: a reader never sees half a file, even if the writer is killed mid-write. Each write goes to a
hidden temporary file in the destination folder (same file system, so the rename is atomic) and is then moved
over the destination with ``os.replace``; on any error (or interrupt) the temporary file is removed.
:func:`atomic_output` is the one primitive: it hands out the temporary path for writers that need a path
(``torch.save``, the ONNX exporter, a link); the others are built on it.

``.names`` files: class names, one per line, as in Darknet's ``voc.names``; read like every dataset file, regular
files only (:func:`yolov2.data.paths.read_regular_file`, standard library only).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from yolov2.data.paths import read_regular_file
from yolov2.errors import DatasetError

__all__ = [
    "FILE_MODE",
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_copy",
    "read_names",
    "write_names",
]

FILE_MODE = 0o644  # mkstemp creates 0600; dataset and exported files are meant to be shared


@contextmanager
def atomic_output(
    path: str | Path, *, prefix: str | None = None, suffix: str = ".tmp", mode: int | None = FILE_MODE
) -> Iterator[Path]:
    """The temporary path to write ``path``'s new contents to; moved over ``path`` when the block ends cleanly.

    The temporary file exists (empty) when the block starts, in ``path``'s folder (created if needed), named
    ``prefix + random + suffix`` (``prefix`` defaults to ``.<name>.``). ``mode``: the permission bits it gets
    before the move (None: keep mkstemp's 0600). On an exception the temporary file is removed and the
    exception propagates; ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}." if prefix is None else prefix, suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (parent folders are created)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Copy the file ``src`` to ``dst`` atomically (contents only, not metadata)."""
    with atomic_output(dst) as tmp:
        shutil.copyfile(src, tmp)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def read_names(path: str | Path) -> list[str]:
    """Class names, one per line (blank lines ignored), as in Darknet's ``voc.names``."""
    try:
        text = read_regular_file(path).decode("utf-8-sig")
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: names file is missing") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read names file ({e})") from e
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"{path}: names file lists no class names")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DatasetError(f"{path}: names file repeats {', '.join(dupes)}")
    return names


def write_names(class_names: Sequence[str], path: str | Path) -> None:
    """Write a names file (one class per line), atomically."""
    atomic_write_text(path, "".join(f"{n}\n" for n in class_names))
