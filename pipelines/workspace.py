"""The workspace: one root (a local folder or any URI ``pyarrow.fs`` opens, e.g. ``s3://bucket/prefix``).

Every write goes to a temporary name first and is then moved into place, so a crash never leaves a
file that looks complete. On object stores a "move" is a copy + delete, which is still safe here
because a stage is only taken as done once its ``manifest.json`` exists, and that is written last.
"""

from __future__ import annotations

import errno
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from yolov2.errors import YoloV2Error

# errno values that mean the disk refused a write (not a bad input read by the writer's caller)
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
_HINTS = {
    errno.ENOSPC: "free space on that disk or point workspace= at a bigger one, then rerun",
    errno.EDQUOT: "the disk quota is exhausted; free space or point workspace= elsewhere, then rerun",
    errno.EROFS: "the workspace's filesystem is mounted read-only; point workspace= at a writable folder",
}


class WorkspaceWriteError(YoloV2Error, OSError):
    """A write into the workspace failed (disk full, read-only, ...); names the file and the problem."""


def write_error(target: str, cause: OSError) -> WorkspaceWriteError:
    """``cause`` as a WorkspaceWriteError naming ``target`` (the final path, not the temp name)."""
    problem = os.strerror(cause.errno) if cause.errno else str(cause)
    hint = _HINTS.get(cause.errno or 0)
    message = f"cannot write {target}: {problem}" + (f" ({hint})" if hint else "")
    return WorkspaceWriteError(cause.errno, message)


@dataclass(frozen=True)
class Workspace:
    """A root folder and the filesystem it lives on. Picklable, so Ray tasks can write into it."""

    uri: str

    @staticmethod
    def open(root: str | Path) -> Workspace:
        text = str(root)
        if "://" not in text:
            text = str(Path(text).expanduser().resolve())
        ws = Workspace(text)
        ws.makedirs("")
        return ws

    @property
    def is_local(self) -> bool:
        return "://" not in self.uri or self.uri.startswith("file://")

    def _fs_and_base(self) -> tuple[pafs.FileSystem, str]:
        if "://" not in self.uri:
            return pafs.LocalFileSystem(), self.uri
        return pafs.FileSystem.from_uri(self.uri)

    @property
    def fs(self) -> pafs.FileSystem:
        return self._fs_and_base()[0]

    def path(self, *parts: str) -> str:
        """The path inside the filesystem of ``root/parts...`` (what ``fs`` methods take)."""
        base = self._fs_and_base()[1].rstrip("/")
        rel = "/".join(p.strip("/") for p in parts if p)
        return f"{base}/{rel}" if rel else base

    def local_path(self, *parts: str) -> Path:
        """A real local path (only for local workspaces: MLflow store, plots, checkpoints)."""
        if not self.is_local:
            raise ValueError(f"workspace {self.uri} is not on the local filesystem")
        return Path(self.path(*parts))

    def uri_of(self, *parts: str) -> str:
        rel = "/".join(p.strip("/") for p in parts if p)
        return f"{self.uri.rstrip('/')}/{rel}" if rel else self.uri

    # --- queries -------------------------------------------------------------------------------
    def exists(self, *parts: str) -> bool:
        info = self.fs.get_file_info(self.path(*parts))
        return info.type != pafs.FileType.NotFound

    def list_dir(self, *parts: str) -> list[str]:
        selector = pafs.FileSelector(self.path(*parts), allow_not_found=True)
        return sorted(info.base_name for info in self.fs.get_file_info(selector))

    # --- writes (all atomic) -------------------------------------------------------------------
    def makedirs(self, *parts: str) -> None:
        self.fs.create_dir(self.path(*parts), recursive=True)

    @contextmanager
    def atomic_output(self, *parts: str) -> Iterator[BinaryIO]:
        """Open ``parts`` for writing via a temp name; renamed into place only on success.

        A failed write removes the temp file and raises WorkspaceWriteError naming the file and the
        problem (e.g. "No space left on device"); other errors from the caller's own code pass unchanged.
        """
        final = self.path(*parts)
        parent = final.rsplit("/", 1)[0]
        temp = f"{parent}/.tmp-{uuid.uuid4().hex}-{final.rsplit('/', 1)[1]}"
        fs = self.fs
        phase = "open"
        try:
            fs.create_dir(parent, recursive=True)
            with fs.open_output_stream(temp) as stream:
                phase = "write"
                yield stream
                phase = "close"  # leaving the with-block flushes the last buffered bytes
            phase = "rename"
            fs.move(temp, final)
        except BaseException as e:
            try:
                fs.delete_file(temp)
            except (FileNotFoundError, OSError):
                pass
            ours = phase != "write" or getattr(e, "errno", None) in _DISK_ERRNOS
            if isinstance(e, OSError) and not isinstance(e, WorkspaceWriteError) and ours:
                raise write_error(self.uri_of(*parts), e) from e
            raise

    def write_bytes(self, data: bytes, *parts: str) -> None:
        with self.atomic_output(*parts) as stream:
            stream.write(data)

    def write_json(self, obj: Any, *parts: str) -> None:
        self.write_bytes(json.dumps(obj, indent=2, sort_keys=True, default=str).encode(), *parts)

    def write_parquet(self, table: pa.Table, *parts: str) -> None:
        with self.atomic_output(*parts) as stream:
            pq.write_table(table, stream)

    # --- reads ---------------------------------------------------------------------------------
    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.path(*parts)) as stream:
            return stream.read()

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read_bytes(*parts))

    def read_parquet(self, *parts: str) -> pa.Table:
        return pq.read_table(self.path(*parts), filesystem=self.fs)

    def delete_dir(self, *parts: str) -> None:
        if self.exists(*parts):
            self.fs.delete_dir(self.path(*parts))

    def remove_temp_files(self, *parts: str) -> int:
        """Delete leftovers of interrupted writes (``.tmp-*``) below ``parts``; returns how many."""
        selector = pafs.FileSelector(self.path(*parts), recursive=True, allow_not_found=True)
        removed = 0
        for info in self.fs.get_file_info(selector):
            if info.type == pafs.FileType.File and info.base_name.startswith(".tmp-"):
                self.fs.delete_file(info.path)
                removed += 1
        return removed
