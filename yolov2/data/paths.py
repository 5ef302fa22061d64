"""File names and paths from untrusted datasets: text that is not UTF-8, special files, symlinks out of the root.

Why: records, rejects, shard JSON and Parquet are UTF-8 text. On Linux a file name is bytes, and
Python hands a byte that is not UTF-8 over as a lone surrogate (``b"\\xff"`` -> ``"\\udcff"``, PEP 383;
a JSON ``"\\udcff"`` escape gives the same); such a string cannot be encoded, so it would crash the
JSON / Arrow writers far from the file that caused it. Readers reject such a file by name instead,
shown with :func:`printable` (``bad_\\xff.jpg``).

Only regular files are opened. A named pipe blocks its reader until something writes to it, a
character device such as ``/dev/zero`` never ends, a socket cannot be read at all: any of them in a
dataset folder would hang or exhaust the stage instead of failing. So every reader asks
:func:`dataset_file_reason` (type, then confinement; a ``stat``, never an ``open``) and reads through
:func:`open_regular` / :func:`read_regular_file`, which check the file type before opening and again
on the opened descriptor; anything else is refused with its type named.

A dataset folder may hold symbolic links. One that leads out of the dataset root (for example
``JPEGImages/a.jpg -> /home/me/.ssh/id_rsa``) would copy an unrelated file into shards that are
shared with others, so readers given a ``confine_to`` root reject every file that does not resolve
inside it. Links that stay inside the root are fine.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

OUTSIDE_ROOT = "points outside the dataset root"
NOT_REGULAR = "not a regular file"

# st_mode tests and the names a message gives them (a regular file has none: it is the one allowed).
_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class NotRegularFileError(OSError):
    """A file that is not a regular file was about to be opened; ``strerror`` names its type.

    An ``OSError``, so a reader's ``except OSError`` (cannot read the file) reports it without a
    branch of its own.
    """

    def __init__(self, path: str | Path, mode: int) -> None:
        super().__init__(errno.EINVAL, not_regular_reason(mode), str(path))


def file_kind(mode: int) -> str:
    """The kind of file an ``st_mode`` describes: "a regular file", "a named pipe (FIFO)", ..."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _FILE_KINDS if test(mode)), f"a special file (mode {stat.filemode(mode)})")


def not_regular_reason(mode: int) -> str:
    """Why a file of this ``st_mode`` is refused (the caller checked it is not a regular file)."""
    return (
        f"{NOT_REGULAR} but {file_kind(mode)}: only regular files are read (a pipe or device can block the "
        "reader or never end); put the file itself here"
    )


def special_file_reason(path: str | Path) -> str | None:
    """Why ``path`` (symlinks followed) may not be opened, naming it and its type; None for a regular file.

    One ``stat``, nothing is opened. A path that cannot be stat-ed (missing, dangling link, no
    permission) is None too: the reader's own open reports that with its usual message.
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # ValueError: a NUL byte in the name
        return None
    return None if stat.S_ISREG(mode) else f"{printable(path)} is {not_regular_reason(mode)}"


def open_regular(path: str | Path) -> BinaryIO:
    """Open a regular file for binary reading; :class:`NotRegularFileError` for anything else.

    The type is checked with ``stat`` before the open, so a FIFO or device is never opened, and
    again on the descriptor, for a file swapped in between: ``O_NONBLOCK`` makes that open return at
    once even for a FIFO (it changes nothing for a regular file). Missing files raise
    ``FileNotFoundError`` as ``open`` does.
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotRegularFileError(path, mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(path, mode)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_file(path: str | Path) -> bytes:
    """The bytes of a regular file (see :func:`open_regular`)."""
    with open_regular(path) as f:
        return f.read()


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


def dataset_file_reason(path: str | Path, confine_to: str | Path | RootConfinement | None) -> str | None:
    """Why a dataset file may not be read, checked before opening it; None when it may.

    Not a regular file (its type named), or, given ``confine_to``, resolving outside that root. The
    type comes first: a link to ``/dev/zero`` is refused as a device, which says more than "outside".
    """
    reason = special_file_reason(path)
    if reason or confine_to is None:
        return reason
    if isinstance(confine_to, RootConfinement):
        return confine_to.outside_reason(path)
    return outside_root_reason(path, confine_to)


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
        type(self).__init__(self, state["root"])

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
