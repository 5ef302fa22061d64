"""File names and paths from untrusted datasets: text that is not UTF-8, and symlinks out of the root.

Why: records, rejects, shard JSON and Parquet are UTF-8 text. On Linux a file name is bytes, and
Python hands a byte that is not UTF-8 over as a lone surrogate (``b"\\xff"`` -> ``"\\udcff"``, PEP 383;
a JSON ``"\\udcff"`` escape gives the same); such a string cannot be encoded, so it would crash the
JSON / Arrow writers far from the file that caused it. Readers reject such a file by name instead,
shown with :func:`printable` (``bad_\\xff.jpg``).

A dataset folder may hold symbolic links. One that leads out of the dataset root (for example
``JPEGImages/a.jpg -> /home/me/.ssh/id_rsa``) would copy an unrelated file into shards that are
shared with others, so readers given a ``confine_to`` root reject every file that does not resolve
inside it. Links that stay inside the root are fine.
"""

from __future__ import annotations

import os
from pathlib import Path

OUTSIDE_ROOT = "points outside the dataset root"


def printable(text: str | Path) -> str:
    """``text`` as valid UTF-8: bytes a file name held that are not UTF-8 become ``\\xNN`` escapes."""
    text = str(text)
    try:
        raw = text.encode("utf-8", "surrogateescape")  # lone surrogates U+DC80..U+DCFF -> the original bytes
    except UnicodeEncodeError:  # other lone surrogates (only JSON escapes make them): \udXXX escapes
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def is_utf8_text(text: str | Path) -> bool:
    """Whether ``text`` can be written as UTF-8 (holds no lone surrogate)."""
    try:
        str(text).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def not_utf8_reason(what: str, text: str | Path) -> str | None:
    """Why ``text`` (a file name or id, described by ``what``) is unusable, or None when it is valid UTF-8."""
    if is_utf8_text(text):
        return None
    return (
        f"{what} '{printable(text)}' is not valid UTF-8 (bytes shown as \\xNN); records and shards are UTF-8 "
        "text, so rename the file"
    )


def outside_root_reason(path: str | Path, root: str | Path) -> str | None:
    """Why ``path`` may not be read as part of the dataset in ``root``, or None when it is inside.

    Both are resolved (symlinks followed, also for a missing final target) and compared as paths,
    so ``/data/voc2`` is not taken to be inside ``/data/voc``.
    """
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if _inside(real, real_root):
        return None
    return (
        f"{printable(path)} {OUTSIDE_ROOT} {printable(real_root)}: a symbolic link leads to {printable(real)}; "
        "copy the file into the dataset instead"
    )


class RootConfinement:
    """:func:`outside_root_reason` for many files in a few folders: each folder is resolved once.

    Why: resolving a path costs one ``lstat`` per component; a shard task checks thousands of files in
    the same two folders. A file that is not itself a symlink resolves to its resolved folder plus its
    name, so after the first file of a folder each check is one ``lstat``. Symlinked files (and odd
    names) take the full :func:`outside_root_reason`. The cache lives in this object only (it is not
    pickled), so a task on another node resolves the folders again on its own file system.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = str(root)
        self._real_root: str | None = None
        self._real_dirs: dict[str, str] = {}

    def __getstate__(self) -> dict:
        return {"root": self.root}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["root"])

    def outside_reason(self, path: str | Path) -> str | None:
        """Same answer as ``outside_root_reason(path, self.root)``."""
        path = str(path)
        folder, name = os.path.split(path)
        if name in ("", ".", "..") or os.path.islink(path):
            return outside_root_reason(path, self.root)
        real_dir = self._real_dirs.get(folder)
        if real_dir is None:
            real_dir = self._real_dirs[folder] = os.path.realpath(folder)
        if self._real_root is None:
            self._real_root = os.path.realpath(self.root)
        if _inside(os.path.join(real_dir, name), self._real_root):
            return None
        return outside_root_reason(path, self.root)  # the full message


def _inside(real: str, real_root: str) -> bool:
    """Whether resolved ``real`` is ``real_root`` or below it (as paths: ``/data/voc2`` is not in ``/data/voc``)."""
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)
