"""Download and extraction against a real HTTP server started by the test on 127.0.0.1.

The handler is written here (``SimpleHTTPRequestHandler`` has no Range support): it serves byte
ranges, counts requests, can cut the connection after N bytes once, and can ignore Range.
"""

from __future__ import annotations

import hashlib
import io
import re
import socket
import stat
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from corpus.special import SPECIAL_KINDS, finishes_within, make_special
from yolov2.data.download import ARCHIVES, Archive, archive_url, download, download_and_extract, extract, md5_file
from yolov2.errors import ConfigError, DatasetError


class _ServerState:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.cut_after: int | None = None  # cut the next response after this many body bytes
        self.ignore_range = False


def _handler(state: _ServerState):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            range_header = self.headers.get("Range")
            state.requests.append((self.path, range_header))
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404, "Not Found")
                return
            start, status = 0, 200
            if range_header and not state.ignore_range:
                m = re.fullmatch(r"bytes=(\d+)-", range_header)
                assert m, range_header
                start = int(m.group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            body = data[start:]
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if state.cut_after is not None:
                n, state.cut_after = state.cut_after, None
                self.wfile.write(body[:n])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    return Handler


@pytest.fixture()
def server():
    state = _ServerState()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _payload(n: int = 300_000, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _serve(server, name: str, data: bytes, md5: str | None = None, size: int | None = None) -> Archive:
    base, state = server
    state.files[f"/{name}"] = data
    return Archive(url=f"{base}/{name}", md5=md5 or hashlib.md5(data).hexdigest(), filename=name, size_bytes=size)


# ---------------------------------------------------------------------------------------------
# download


def test_interrupted_download_resumes_from_the_part_file(server, tmp_path):
    data = _payload()
    archive = _serve(server, "data.tar", data)
    _, state = server
    state.cut_after = 100_000
    with pytest.raises(DatasetError, match=re.escape(archive.url)):
        download(archive, tmp_path, progress=False, retries=0)
    part = tmp_path / "data.tar.part"
    assert part.stat().st_size == 100_000
    assert not (tmp_path / "data.tar").exists()
    path = download(archive, tmp_path, progress=False, retries=0)
    assert path == tmp_path / "data.tar"
    assert path.read_bytes() == data
    assert state.requests == [("/data.tar", None), ("/data.tar", "bytes=100000-")]
    assert not part.exists()


def test_interruption_is_retried_within_one_call(server, tmp_path, capsys):
    data = _payload(seed=1)
    archive = _serve(server, "a.zip", data, size=len(data))
    _, state = server
    state.cut_after = 12_345
    path = download(archive, tmp_path, progress=True, retries=2, retry_wait=0)
    assert path.read_bytes() == data
    assert [r for _, r in state.requests] == [None, "bytes=12345-"]
    lines = capsys.readouterr().err.splitlines()  # progress lines, a resumed attempt starting at its offset
    assert lines[0].startswith("[download] a.zip 0 B/293.0 KiB (0%)")
    assert "[download] a.zip 12.1 KiB/293.0 KiB (4%) elapsed 0:00:00" in lines
    assert lines[-1].startswith("[download] a.zip 293.0 KiB/293.0 KiB (100%)")


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    data = _payload(seed=2)
    archive = _serve(server, "b.tar", data)
    _, state = server
    state.ignore_range = True
    (tmp_path / "b.tar.part").write_bytes(b"\x00" * 5000)  # wrong bytes: appending would break the md5
    path = download(archive, tmp_path, progress=False, retries=0)
    assert path.read_bytes() == data
    assert state.requests == [("/b.tar", "bytes=5000-")]


def test_complete_part_file_is_finished_without_refetching(server, tmp_path):
    data = _payload(seed=3, n=5000)
    archive = _serve(server, "c.tar", data)
    _, state = server
    (tmp_path / "c.tar.part").write_bytes(data)
    assert download(archive, tmp_path, progress=False, retries=0).read_bytes() == data
    assert state.requests == [("/c.tar", "bytes=5000-")]  # answered 416: nothing left to send


def test_wrong_checksum_fails_clearly_and_a_rerun_refetches(server, tmp_path):
    data = _payload(seed=4)
    good = _serve(server, "d.tar", data)
    bad = Archive(url=good.url, md5="0" * 32, filename="d.tar")
    with pytest.raises(DatasetError) as err:
        download(bad, tmp_path, progress=False, retries=0)
    message = str(err.value)
    assert "d.tar" in message and "0" * 32 in message and hashlib.md5(data).hexdigest() in message
    assert not (tmp_path / "d.tar").exists() and not (tmp_path / "d.tar.part").exists()
    assert (tmp_path / "d.tar.bad").read_bytes() == data
    _, state = server
    assert download(good, tmp_path, progress=False, retries=0).read_bytes() == data
    assert len(state.requests) == 2


def test_wrong_size_fails_clearly(server, tmp_path):
    data = _payload(seed=5, n=4000)
    archive = _serve(server, "e.zip", data, size=3000)
    with pytest.raises(DatasetError, match=r"e\.zip: downloaded 4000 bytes .* expected 3000"):
        download(archive, tmp_path, progress=False, retries=0)


def test_second_call_does_no_network_request(server, tmp_path):
    data = _payload(seed=6)
    archive = _serve(server, "f.tar", data)
    _, state = server
    download(archive, tmp_path, progress=False)
    assert len(state.requests) == 1
    assert download(archive, tmp_path, progress=False).read_bytes() == data
    (tmp_path / "f.tar.verified").unlink()  # no stamp: the file is re-hashed locally, still no request
    assert download(archive, tmp_path, progress=False).read_bytes() == data
    assert len(state.requests) == 1


def test_corrupt_existing_file_is_set_aside_and_fetched_again(server, tmp_path):
    data = _payload(seed=7, n=2000)
    archive = _serve(server, "g.tar", data)
    (tmp_path / "g.tar").write_bytes(b"not the archive")
    assert download(archive, tmp_path, progress=False).read_bytes() == data
    assert (tmp_path / "g.tar.bad").read_bytes() == b"not the archive"


def test_network_failures_name_the_url(server, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = Archive(url=f"http://127.0.0.1:{port}/h.tar", md5="0" * 32, filename="h.tar")
    with pytest.raises(DatasetError, match=re.escape(dead.url)):
        download(dead, tmp_path, progress=False, retries=1, retry_wait=0)
    base, _ = server
    missing = Archive(url=f"{base}/missing.tar", md5="0" * 32, filename="missing.tar")
    with pytest.raises(DatasetError, match=re.escape(missing.url) + ".*HTTP 404"):
        download(missing, tmp_path, progress=False, retries=3, retry_wait=0)


def test_base_url_selects_a_mirror(server, tmp_path):
    data = _payload(seed=8, n=1000)
    base, state = server
    state.files["/mirror/i.tar"] = data
    archive = Archive(
        url="http://unreachable.invalid/pascal/i.tar", md5=hashlib.md5(data).hexdigest(), filename="i.tar"
    )
    assert archive_url(archive) == archive.url
    assert archive_url(archive, f"{base}/mirror/") == f"{base}/mirror/i.tar"
    assert download(archive, tmp_path, progress=False, base_url=f"{base}/mirror").read_bytes() == data


def test_registry_matches_torchvision_and_the_publishers():
    from torchvision.datasets.voc import DATASET_YEAR_DICT

    assert set(ARCHIVES) == {
        "voc2007_trainval",
        "voc2007_test",
        "voc2012_trainval",
        "coco2017_train",
        "coco2017_val",
        "coco2017_annotations",
    }
    for name, key in (("voc2007_trainval", "2007"), ("voc2007_test", "2007-test"), ("voc2012_trainval", "2012")):
        ref = DATASET_YEAR_DICT[key]
        assert (ARCHIVES[name].url, ARCHIVES[name].md5, ARCHIVES[name].filename) == (
            ref["url"],
            ref["md5"],
            ref["filename"],
        )
        assert ARCHIVES[name].content == ref["base_dir"].replace("\\", "/")
    for archive in ARCHIVES.values():
        assert re.fullmatch(r"[0-9a-f]{32}", archive.md5)
        assert archive.url.rsplit("/", 1)[1] == archive.filename
    assert ARCHIVES["coco2017_val"].url == "http://images.cocodataset.org/zips/val2017.zip"
    with pytest.raises(ConfigError, match="voc2007_trainval"):
        download("voc2099", "/nonexistent", progress=False)


# ---------------------------------------------------------------------------------------------
# extract


def _tar(path: Path, members: list[tuple[str, bytes | None, str | None]], mode: str = "w") -> Path:
    """members: (name, data, symlink target); data None + target None = a folder."""
    with tarfile.open(path, mode) as tar:
        for name, data, target in members:
            info = tarfile.TarInfo(name)
            if target is not None:
                info.type, info.linkname = tarfile.SYMTYPE, target
                tar.addfile(info)
            elif data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return path


def _files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_extract_tar_merges_trees_and_is_idempotent(tmp_path):
    a = _tar(
        tmp_path / "a.tar.gz",
        [
            ("VOCdevkit/VOC2007/JPEGImages/1.jpg", b"one", None),
            ("VOCdevkit/VOC2007/ImageSets/Main/trainval.txt", b"1\n", None),
        ],
        "w:gz",
    )
    b = _tar(
        tmp_path / "b.tar",
        [
            ("VOCdevkit/VOC2007/JPEGImages/2.jpg", b"two", None),
            ("VOCdevkit/VOC2007/ImageSets/Main/test.txt", b"2\n", None),
        ],
    )
    dest = tmp_path / "out"
    assert extract(a, dest) == dest
    extract(b, dest)
    voc = dest / "VOCdevkit" / "VOC2007"
    assert (voc / "JPEGImages" / "1.jpg").read_bytes() == b"one"
    assert (voc / "JPEGImages" / "2.jpg").read_bytes() == b"two"
    assert sorted(p.name for p in (voc / "ImageSets" / "Main").iterdir()) == ["test.txt", "trainval.txt"]
    (voc / "JPEGImages" / "1.jpg").write_bytes(b"edited")
    extract(a, dest)  # marker matches: nothing is extracted again
    assert (voc / "JPEGImages" / "1.jpg").read_bytes() == b"edited"
    assert not [p for p in dest.iterdir() if p.name.startswith(".extract-")]


UNSAFE_TAR_MEMBERS = {
    "dotdot": [("ok.txt", b"ok", None), ("../evil.txt", b"evil", None)],
    "nested_dotdot": [("a/../../evil.txt", b"evil", None)],
    "absolute": [("{tmp}/abs-evil.txt", b"evil", None)],  # {tmp}: this test's tmp_path (absolute)
    "symlink_to_etc": [("etc_link", None, "/etc")],
    "symlink_escaping": [("up", None, "../../")],
    "write_through_symlink": [("d", None, ".."), ("d/evil.txt", b"evil", None)],
}


@pytest.mark.security
@pytest.mark.parametrize("case", sorted(UNSAFE_TAR_MEMBERS))
def test_extract_refuses_unsafe_tar_members(tmp_path, case):
    members = [(name.format(tmp=tmp_path), data, target) for name, data, target in UNSAFE_TAR_MEMBERS[case]]
    archive = _tar(tmp_path / "evil.tar", members)
    dest = tmp_path / "sandbox" / "out"
    dest.mkdir(parents=True)
    before = _files_under(tmp_path)
    with pytest.raises(DatasetError, match="evil.tar: refusing to extract member"):
        extract(archive, dest)
    assert _files_under(tmp_path) == before, "nothing may be written anywhere, inside or outside"


@pytest.mark.security
@pytest.mark.parametrize("member_type", [tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE])
def test_extract_refuses_special_tar_members(tmp_path, member_type):
    """A FIFO or device in an archive would be a special file in the dataset: refused, nothing written."""
    archive = tmp_path / "special.tar"
    with tarfile.open(archive, "w") as tar:
        tar.addfile(tarfile.TarInfo("VOC/ok.txt"), io.BytesIO(b""))
        info = tarfile.TarInfo("VOC/Annotations/a.xml")
        info.type, info.devmajor, info.devminor = member_type, 1, 5
        tar.addfile(info)
    dest = tmp_path / "out"
    with pytest.raises(DatasetError, match="special.tar: refusing to extract member 'VOC/Annotations/a.xml'"):
        extract(archive, dest)
    assert _files_under(dest) == set()


@pytest.mark.security
@pytest.mark.parametrize("kind", sorted(SPECIAL_KINDS))
def test_an_archive_or_download_that_is_not_a_regular_file_is_refused_unopened(tmp_path, kind):
    path = make_special(tmp_path / "VOCtrainval.tar", kind)
    with pytest.raises(
        DatasetError,
        match=f"cannot extract: {re.escape(str(path))} is not a regular file but {re.escape(SPECIAL_KINDS[kind])}",
    ):
        finishes_within(10, lambda: extract(path, tmp_path / "out"))
    with pytest.raises(OSError, match="not a regular file"):
        finishes_within(10, lambda: md5_file(path))


def _zip(path: Path, members: list[tuple[str, bytes, bool]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, is_link in members:
            info = zipfile.ZipInfo(name)
            if is_link:
                info.create_system = 3  # unix, so the mode bits are meaningful
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, data)
    return path


def test_extract_zip_and_idempotent(tmp_path):
    archive = _zip(tmp_path / "val2017.zip", [("val2017/1.jpg", b"1", False), ("val2017/sub/2.jpg", b"2", False)])
    dest = tmp_path / "coco"
    extract(archive, dest)
    assert (dest / "val2017" / "1.jpg").read_bytes() == b"1"
    assert (dest / "val2017" / "sub" / "2.jpg").read_bytes() == b"2"
    (dest / "val2017" / "1.jpg").unlink()
    extract(archive, dest)
    assert not (dest / "val2017" / "1.jpg").exists(), "a second call must be a no-op"


def test_extract_progress_lines(tmp_path, capsys):
    tar = _tar(tmp_path / "a.tar", [("a/1.jpg", b"1" * 3000, None)])
    tgz = _tar(tmp_path / "b.tar.gz", [("b/1.jpg", b"1" * 3000, None)], "w:gz")
    zipped = _zip(tmp_path / "c.zip", [("c/1.jpg", b"1" * 3000, False), ("c/2.jpg", b"2" * 1000, False)])
    for archive in (tar, tgz, zipped):
        extract(archive, tmp_path / "out", progress=True)
    lines = capsys.readouterr().err.splitlines()
    size = f"{tar.stat().st_size / 1024:.1f} KiB"
    assert [line.split(" elapsed")[0].split(" (100%)")[0] for line in lines[::2]] == [
        f"[extract] a.tar 0 B/{size} (0%)",
        "[extract] b.tar.gz 0 B",
        "[extract] c.zip 0 B/3.9 KiB (0%)",
    ]
    assert lines[1].startswith(f"[extract] a.tar {size}/{size} (100%)")  # uncompressed: against its size
    assert lines[3].startswith("[extract] b.tar.gz 3.5 KiB ") and "ETA" not in lines[3]  # compressed: no total
    # (3.5 KiB: the tar stream up to the end of its one member, a 512-byte header and 3000 bytes padded to 3072)
    assert lines[5].startswith("[extract] c.zip 3.9 KiB/3.9 KiB (100%)")


UNSAFE_ZIP_MEMBERS = {
    "dotdot": [("ok.txt", b"ok", False), ("../evil.txt", b"evil", False)],
    "nested_dotdot": [("a/../../evil.txt", b"evil", False)],
    "absolute": [("{tmp}/abs-evil.txt", b"evil", False)],
    "backslash_dotdot": [("..\\evil.txt", b"evil", False)],
    "symlink_to_etc": [("etc_link", b"/etc", True)],
}


@pytest.mark.security
@pytest.mark.parametrize("case", sorted(UNSAFE_ZIP_MEMBERS))
def test_extract_refuses_unsafe_zip_members(tmp_path, case):
    members = [(name.format(tmp=tmp_path), data, link) for name, data, link in UNSAFE_ZIP_MEMBERS[case]]
    archive = _zip(tmp_path / "evil.zip", members)
    dest = tmp_path / "sandbox" / "out"
    dest.mkdir(parents=True)
    before = _files_under(tmp_path)
    with pytest.raises(DatasetError, match="evil.zip: refusing to extract member"):
        extract(archive, dest)
    assert _files_under(tmp_path) == before


def test_extract_rejects_a_corrupt_archive(tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(_payload(n=3000))
    with pytest.raises(DatasetError, match="junk.tar"):
        extract(junk, tmp_path / "out")
    good = _tar(tmp_path / "t.tar.gz", [("x/y.txt", b"y" * 10000, None)], "w:gz")
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(DatasetError, match="truncated.tar.gz"):
        extract(truncated, tmp_path / "out2")


def test_download_and_extract_end_to_end(server, tmp_path):
    tar_path = _tar(tmp_path / "VOCtest.tar", [("VOCdevkit/VOC2007/Annotations/000001.xml", b"<annotation/>", None)])
    data = tar_path.read_bytes()
    archive = _serve(server, "VOCtest.tar", data)
    archive = Archive(archive.url, archive.md5, archive.filename, len(data), content="VOCdevkit/VOC2007")
    root = tmp_path / "datasets"
    voc = download_and_extract(archive, root, progress=False)
    assert voc == root / "VOCdevkit" / "VOC2007"
    assert (voc / "Annotations" / "000001.xml").read_bytes() == b"<annotation/>"
    assert md5_file(root / "downloads" / "VOCtest.tar") == archive.md5
