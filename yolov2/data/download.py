"""Download and extract the public VOC and COCO archives: resumable, checksummed, safe, idempotent.

Why this much care: the archives are large (COCO train2017 is 18 GB), links drop, mirrors serve
stale files, and archives are untrusted input. So:

* :func:`download` fetches into ``<file>.part`` and, after an interruption, resumes from the part's
  size with an HTTP ``Range`` request (restarting cleanly if the server ignores it); the MD5 the
  publishers give is computed while streaming and checked before the file is renamed into place. A
  bad file is moved aside to ``<file>.bad`` so a rerun fetches it again. A verified file is never
  fetched again (a small ``<file>.verified`` stamp saves re-hashing it).
* :func:`extract` reads only a regular file (a FIFO would block it), and refuses members that would
  land outside the destination (absolute paths, ``..``, links pointing outside) or are not regular
  files, folders or links (devices, FIFOs), via ``tarfile``'s ``"data"`` filter plus our own checks, and
  checks every zip member's path; it extracts into a temporary folder inside the destination, moves
  the result into place, and writes a marker last so a rerun does nothing.

Errors are :class:`~yolov2.errors.DatasetError` naming the URL or file and what to do.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import lzma
import os
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from yolov2.data.paths import open_regular, read_regular_file, special_file_reason
from yolov2.errors import ConfigError, DatasetError
from yolov2.io import atomic_write_text
from yolov2.progress import BYTES_UNIT, Progress

_CHUNK = 1 << 20
_USER_AGENT = "yolov2-pipeline/0.1 (python urllib)"


@dataclass(frozen=True)
class Archive:
    """One downloadable archive. ``content``: what extracting it creates (relative to the destination)."""

    url: str
    md5: str
    filename: str
    size_bytes: int | None = None
    content: str = ""


# URLs as in torchvision.datasets.voc (the Oxford host moved from host.robots to thor.robots) and
# cocodataset.org; MD5s as published (torchvision's voc.py; COCO's md5s as widely re-published).
ARCHIVES: dict[str, Archive] = {
    "voc2007_trainval": Archive(
        url="https://thor.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtrainval_06-Nov-2007.tar",
        md5="c52e279531787c972589f7e41ab4ae64",
        filename="VOCtrainval_06-Nov-2007.tar",
        size_bytes=460_032_000,
        content="VOCdevkit/VOC2007",
    ),
    "voc2007_test": Archive(
        url="https://thor.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar",
        md5="b6e924de25625d8de591ea690078ad9f",
        filename="VOCtest_06-Nov-2007.tar",
        size_bytes=451_020_800,
        content="VOCdevkit/VOC2007",
    ),
    "voc2012_trainval": Archive(
        url="https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        md5="6cd6e144f989b92b3379bac3b3de84fd",
        filename="VOCtrainval_11-May-2012.tar",
        size_bytes=1_999_639_040,
        content="VOCdevkit/VOC2012",
    ),
    "coco2017_train": Archive(
        url="http://images.cocodataset.org/zips/train2017.zip",
        md5="cced6f7f71b7629ddf16f17bbcfab6b2",
        filename="train2017.zip",
        size_bytes=19_336_861_798,
        content="train2017",
    ),
    "coco2017_val": Archive(
        url="http://images.cocodataset.org/zips/val2017.zip",
        md5="442b8da7639aecaf257c1dceb8ba8c80",
        filename="val2017.zip",
        size_bytes=815_585_330,
        content="val2017",
    ),
    "coco2017_annotations": Archive(
        url="http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
        md5="f4bbac642086de4f52a3fdda2de5fa2c",
        filename="annotations_trainval2017.zip",
        size_bytes=252_907_541,
        content="annotations",
    ),
}


# What a truncated or damaged archive raises while being read (decompressors included).
_CORRUPT_ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)


class _Interrupted(Exception):
    """A transfer stopped early; the part file keeps what arrived, so a retry resumes."""


def resolve_archive(name_or_archive: str | Archive) -> Archive:
    """An :class:`Archive` from its name in :data:`ARCHIVES` (or itself)."""
    if isinstance(name_or_archive, Archive):
        return name_or_archive
    try:
        return ARCHIVES[name_or_archive]
    except KeyError:
        raise ConfigError(
            f"unknown archive {name_or_archive!r}; known archives: {', '.join(sorted(ARCHIVES))}"
        ) from None


def archive_url(archive: Archive, base_url: str | None = None) -> str:
    """The URL to fetch: the official one, or ``<base_url>/<filename>`` for a mirror."""
    if base_url is None:
        return archive.url
    return f"{base_url.rstrip('/')}/{archive.filename}"


def md5_file(path: str | Path, chunk_size: int = _CHUNK, *, progress: bool = False) -> str:
    """Hex MD5 of a file, read in chunks."""
    h = hashlib.md5()
    _hash_into(h, Path(path), chunk_size, progress)
    return h.hexdigest()


def _hash_into(hasher: hashlib._Hash, path: Path, chunk_size: int, progress: bool) -> None:
    """Feed the file into ``hasher``; with ``progress``, progress lines (hashing 18 GB takes a while)."""
    with (
        open_regular(path) as f,
        Progress("verify", path.stat().st_size, BYTES_UNIT, desc=path.name, enabled=progress) as bar,
    ):
        while chunk := f.read(chunk_size):
            hasher.update(chunk)
            bar.advance(len(chunk))


def download(
    name_or_archive: str | Archive,
    dest_dir: str | Path,
    *,
    progress: bool = True,
    base_url: str | None = None,
    retries: int = 3,
    retry_wait: float = 2.0,
    timeout: float = 60.0,
) -> Path:
    """Fetch an archive into ``dest_dir`` (resuming a ``.part``), verify its MD5, return its path.

    Idempotent: an already verified file returns at once with no network access. Up to ``retries``
    interrupted transfers are resumed automatically (waiting ``retry_wait * attempt`` seconds);
    past that a :class:`DatasetError` names the URL and the part file stays for the next call to
    resume. A checksum mismatch moves the file to ``<file>.bad`` and raises.
    """
    archive = resolve_archive(name_or_archive)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / archive.filename
    if final.is_file():
        if _is_verified(final, archive.md5):
            return final
        actual = md5_file(final, progress=progress)
        if actual == archive.md5:
            _stamp_verified(final, actual)
            return final
        os.replace(final, _bad_path(final))  # a stale or corrupt copy: set aside, fetch again
    url = archive_url(archive, base_url)
    part = dest_dir / f"{archive.filename}.part"
    attempt = 0
    while True:
        try:
            actual = _fetch_into(url, part, archive.size_bytes, progress=progress, timeout=timeout)
            break
        except _Interrupted as e:
            attempt += 1
            if attempt > retries:
                raise DatasetError(
                    f"download of {url} failed after {attempt} attempt(s): {e}; the {_size(part)} bytes "
                    f"received are kept in {part} and the next call resumes from there"
                ) from e
            time.sleep(retry_wait * attempt)
    received = part.stat().st_size
    if archive.size_bytes is not None and received != archive.size_bytes:
        os.replace(part, _bad_path(final))
        raise DatasetError(
            f"{archive.filename}: downloaded {received} bytes from {url} but expected {archive.size_bytes}; "
            f"the file was moved to {_bad_path(final).name}, run again to download it afresh"
        )
    if actual != archive.md5:
        os.replace(part, _bad_path(final))
        raise DatasetError(
            f"{archive.filename}: checksum mismatch (md5 expected {archive.md5}, got {actual}) for the file "
            f"downloaded from {url}; it was moved to {_bad_path(final).name}, run again to download it afresh"
        )
    os.replace(part, final)
    _stamp_verified(final, actual)
    return final


def _fetch_into(url: str, part: Path, size: int | None, *, progress: bool, timeout: float) -> str:
    """Append the rest of ``url`` to ``part`` (from its current size); return the whole file's MD5."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    if size is not None and offset == size:
        return md5_file(part, progress=progress)
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset and _range_total(e.headers.get("Content-Range")) == offset:
            return md5_file(part, progress=progress)  # the part already holds the whole file
        if e.code == 416:
            part.unlink(missing_ok=True)
            raise _Interrupted(f"server refused to resume at byte {offset} (HTTP 416); restarting") from e
        if 500 <= e.code < 600:
            raise _Interrupted(f"HTTP {e.code} {e.reason}") from e
        raise DatasetError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise _Interrupted(f"could not connect ({reason})") from e
    with response:
        hasher = hashlib.md5()
        if offset and response.status == 206:
            start = _range_start(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                raise _Interrupted(f"server answered the range request at byte {start}, not {offset}; restarting")
            _hash_into(hasher, part, _CHUNK, progress)
            mode = "ab"
        else:  # 200: full content (the server ignored Range, or this is a fresh start)
            offset, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        total = offset + expected if expected is not None else size
        received = 0
        bar = Progress("download", total, BYTES_UNIT, desc=part.name[: -len(".part")], enabled=progress)
        bar.update(offset)
        with open(part, mode) as f:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as e:  # reset, timeout, IncompleteRead
                    raise _Interrupted(f"connection lost after {offset + received} bytes ({e})") from e
                if not chunk:
                    break
                f.write(chunk)  # a write error (disk full) is not retried: it propagates as is
                hasher.update(chunk)
                received += len(chunk)
                bar.advance(len(chunk))
            f.flush()
            os.fsync(f.fileno())
        bar.close()
        if expected is not None and received < expected:
            raise _Interrupted(f"connection closed after {offset + received} of {offset + expected} bytes")
    return hasher.hexdigest()


def _range_start(content_range: str | None) -> int | None:
    """Start byte of ``Content-Range: bytes START-END/TOTAL`` (None when absent or malformed)."""
    try:
        return int(content_range.split()[1].split("-")[0])  # type: ignore[union-attr]
    except (AttributeError, IndexError, ValueError):
        return None


def _range_total(content_range: str | None) -> int | None:
    """TOTAL of ``Content-Range: bytes */TOTAL`` (None when absent or malformed)."""
    try:
        return int(content_range.rsplit("/", 1)[1])  # type: ignore[union-attr]
    except (AttributeError, IndexError, ValueError):
        return None


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _bad_path(final: Path) -> Path:
    return final.with_name(final.name + ".bad")


def _stamp_path(final: Path) -> Path:
    return final.with_name(final.name + ".verified")


def _stamp_verified(final: Path, md5: str) -> None:
    st = final.stat()
    atomic_write_text(_stamp_path(final), json.dumps({"md5": md5, "size": st.st_size, "mtime_ns": st.st_mtime_ns}))


def _is_verified(final: Path, md5: str) -> bool:
    """True when the stamp says this exact file (same size and mtime) was verified with ``md5``."""
    try:
        stamp = json.loads(read_regular_file(_stamp_path(final)))
        st = final.stat()
    except (OSError, ValueError):
        return False
    return stamp == {"md5": md5, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


# --------------------------------------------------------------------------------------------
# Extraction


def extract(archive_path: str | Path, dest: str | Path, *, progress: bool = False) -> Path:
    """Safely extract a tar (any compression) or zip into ``dest``; returns ``dest``.

    Members are extracted into ``dest/.extract-<name>.tmp`` and then moved into ``dest``, merging
    with folders already there (the VOC2007 trainval and test tars share ``VOCdevkit/VOC2007``).
    ``dest/.extracted/<name>.json`` is written last; when it matches the archive's size nothing is
    done. An unsafe member raises :class:`DatasetError` naming the archive and the member, and
    nothing is moved into ``dest``.
    """
    archive_path = Path(archive_path)
    unusable = special_file_reason(archive_path)
    if unusable:  # a FIFO would block the archive readers' open
        raise DatasetError(f"cannot extract: {unusable}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    marker = dest / ".extracted" / f"{archive_path.name}.json"
    expected_marker = json.dumps({"archive": archive_path.name, "size": archive_path.stat().st_size})
    if marker.is_file() and marker.read_text() == expected_marker:
        return dest
    tmp = dest / f".extract-{archive_path.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        try:
            if zipfile.is_zipfile(archive_path):
                _extract_zip(archive_path, tmp, progress)
            elif tarfile.is_tarfile(archive_path):
                _extract_tar(archive_path, tmp, progress)
            else:
                raise DatasetError(f"{archive_path}: not a tar or zip archive (a truncated or wrong download?)")
        except _CORRUPT_ARCHIVE_ERRORS as e:
            raise DatasetError(
                f"{archive_path}: corrupt archive ({type(e).__name__}: {e}); delete it and download it again"
            ) from e
        _merge_move(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_text(marker, expected_marker)
    return dest


def download_and_extract(
    name_or_archive: str | Archive,
    root: str | Path,
    *,
    progress: bool = True,
    base_url: str | None = None,
) -> Path:
    """Download into ``root/downloads`` and extract into ``root``; returns ``root / archive.content``."""
    archive = resolve_archive(name_or_archive)
    root = Path(root)
    path = download(archive, root / "downloads", progress=progress, base_url=base_url)
    extract(path, root, progress=progress)
    return root / archive.content


def _unsafe_member_reason(name: str) -> str | None:
    """Why an archive member name is unsafe to extract (None when it is fine)."""
    if not name:
        return "empty member name"
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        return "absolute path"
    if ".." in PurePosixPath(posix).parts:
        return "'..' in the path"
    return None


def _extract_tar(archive_path: Path, tmp: Path, progress: bool) -> None:
    """Progress counts the bytes of the tar stream before each member: against the archive's size when it
    is uncompressed (VOC's), with no total (so no ETA) when compressed."""

    def checked(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        bar.update(member.offset)
        reason = _unsafe_member_reason(member.name)
        if reason is None and (member.issym() or member.islnk()):
            target = member.linkname.replace("\\", "/")
            if target.startswith("/"):
                reason = f"link to the absolute path {member.linkname!r}"
        if reason is not None:
            raise DatasetError(f"{archive_path}: refusing to extract member {member.name!r}: {reason}")
        try:
            return tarfile.data_filter(member, path)
        except tarfile.FilterError as e:
            raise DatasetError(f"{archive_path}: refusing to extract member {member.name!r}: {e}") from e

    with tarfile.open(archive_path) as tar:
        compressed = not isinstance(tar.fileobj, io.BufferedReader)
        total = None if compressed else archive_path.stat().st_size
        with Progress("extract", total, BYTES_UNIT, desc=archive_path.name, enabled=progress) as bar:
            tar.extractall(tmp, filter=checked)
            bar.update(tar.offset if total is None else total)  # total is None exactly when compressed


def _extract_zip(archive_path: Path, tmp: Path, progress: bool) -> None:
    root = tmp.resolve()
    with zipfile.ZipFile(archive_path) as zf:
        members = zf.infolist()
        for info in members:  # check every member before writing anything
            reason = _unsafe_member_reason(info.filename)
            if reason is None and stat.S_ISLNK(info.external_attr >> 16):
                reason = "symbolic link (not supported in zip archives)"
            if reason is None and not (root / info.filename).resolve().is_relative_to(root):
                reason = "path outside the destination"
            if reason is not None:
                raise DatasetError(f"{archive_path}: refusing to extract member {info.filename!r}: {reason}")
        total = sum(info.file_size for info in members)
        with Progress("extract", total, BYTES_UNIT, desc=archive_path.name, enabled=progress) as bar:
            for info in members:
                zf.extract(info, tmp)
                bar.advance(info.file_size)


def _merge_move(src: Path, dst: Path) -> None:
    """Move the tree ``src`` into ``dst``: renames where possible, merging into existing folders."""
    for entry in sorted(src.iterdir()):
        target = dst / entry.name
        if entry.is_dir() and not entry.is_symlink() and target.is_dir() and not target.is_symlink():
            _merge_move(entry, target)
        elif entry.is_dir() and not entry.is_symlink() and target.exists():
            raise DatasetError(f"cannot extract folder {entry.name!r} over the existing file {target}")
        else:
            if target.is_dir() and not target.is_symlink():
                raise DatasetError(f"cannot extract file {entry.name!r} over the existing folder {target}")
            os.replace(entry, target)


__all__ = [
    "ARCHIVES",
    "Archive",
    "archive_url",
    "download",
    "download_and_extract",
    "extract",
    "md5_file",
    "resolve_archive",
]
