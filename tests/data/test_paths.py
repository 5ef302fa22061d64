"""yolov2/data/paths.py: file names that are not UTF-8, special files, and symlinks leading out of a dataset root.

References: the bytes the file system really holds (``os.listdir`` on bytes), links and special files
made here (their type known from how they were made), and ``stat``'s own mode constants.
"""

from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import pyarrow as pa
import pytest

from corpus.special import SPECIAL_KINDS, finishes_within, make_special
from yolov2.data.paths import (
    NOT_REGULAR,
    OUTSIDE_ROOT,
    NotRegularFileError,
    RootConfinement,
    dataset_file_reason,
    file_kind,
    is_utf8_text,
    not_utf8_reason,
    open_regular,
    outside_root_reason,
    printable,
    read_regular_file,
    special_file_reason,
)


def test_name_bytes_that_are_not_utf8_print_as_escapes_and_encode(tmp_path: Path) -> None:
    raw = b"bad_\xff\xfe_\xc3\xa9.jpg"  # two invalid bytes, then a valid UTF-8 e-acute
    with open(os.fsencode(tmp_path) + b"/" + raw, "wb") as f:
        f.write(b"x")
    (listed,) = os.listdir(tmp_path)  # what Python hands over: lone surrogates for the invalid bytes
    assert os.fsencode(listed) == raw
    assert not is_utf8_text(listed)
    shown = printable(listed)
    assert shown == "bad_\\xff\\xfe_é.jpg"
    shown.encode("utf-8")  # what JSON, Arrow and tar headers need
    pa.array([shown])
    json.dumps(shown, ensure_ascii=False).encode("utf-8")
    reason = not_utf8_reason("file name", listed)
    assert reason is not None and "bad_\\xff\\xfe_é.jpg" in reason and "not valid UTF-8" in reason
    reason.encode("utf-8")


def test_valid_text_is_unchanged_and_json_surrogates_are_escaped() -> None:
    for text in ("plain.jpg", "café_画像.jpg", "emoji_\U0001f600.jpg"):
        assert is_utf8_text(text) and printable(text) == text and not_utf8_reason("x", text) is None
    from_json = json.loads('"a\\ud800b"')  # a lone high surrogate: only a JSON escape makes one
    assert not is_utf8_text(from_json)
    assert printable(from_json) == "a\\ud800b"


def test_links_inside_the_root_are_fine_and_links_out_are_named(tmp_path: Path) -> None:
    root = tmp_path / "data" / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "JPEGImages" / "a.jpg").write_bytes(b"x")
    os.symlink("a.jpg", root / "JPEGImages" / "inside.jpg")
    secret = tmp_path / "secret.txt"
    secret.write_text("token")
    os.symlink(secret, root / "JPEGImages" / "out.jpg")
    os.symlink(tmp_path / "nowhere.jpg", root / "JPEGImages" / "dangling_out.jpg")
    sibling = tmp_path / "data" / "voc2"  # shares the prefix "…/voc" but is another folder
    sibling.mkdir()
    (sibling / "b.jpg").write_bytes(b"x")
    os.symlink(sibling / "b.jpg", root / "JPEGImages" / "sibling.jpg")

    assert outside_root_reason(root / "JPEGImages" / "a.jpg", root) is None
    assert outside_root_reason(root / "JPEGImages" / "inside.jpg", root) is None
    assert outside_root_reason(root / "JPEGImages" / "missing.jpg", root) is None  # missing is another reject
    for name, target in (
        ("out.jpg", secret),
        ("dangling_out.jpg", tmp_path / "nowhere.jpg"),
        ("sibling.jpg", sibling / "b.jpg"),
    ):
        reason = outside_root_reason(root / "JPEGImages" / name, root)
        assert reason is not None and OUTSIDE_ROOT in reason, name
        assert str(root / "JPEGImages" / name) in reason and str(target) in reason
    # a root reached through a symlink is resolved the same way, so its own files stay inside
    os.symlink(root, tmp_path / "link_to_root")
    assert outside_root_reason(tmp_path / "link_to_root" / "JPEGImages" / "a.jpg", tmp_path / "link_to_root") is None


def test_root_confinement_answers_exactly_as_outside_root_reason(tmp_path: Path) -> None:
    root = tmp_path / "data" / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "JPEGImages" / "a.jpg").write_bytes(b"x")
    os.symlink("a.jpg", root / "JPEGImages" / "inside.jpg")
    (tmp_path / "secret.txt").write_text("token")
    os.symlink(tmp_path / "secret.txt", root / "JPEGImages" / "out.jpg")
    outside_dir = tmp_path / "elsewhere"
    outside_dir.mkdir()
    (outside_dir / "b.jpg").write_bytes(b"x")
    os.symlink(outside_dir, root / "Annotations")  # a whole folder linked out
    os.symlink(root, tmp_path / "link_to_root")
    paths = [root / "JPEGImages" / n for n in ("a.jpg", "inside.jpg", "out.jpg", "missing.jpg", ".", "..")]
    paths += [root / "Annotations" / "b.jpg", root / "Annotations" / "missing.xml", tmp_path / "secret.txt"]
    for base in (root, tmp_path / "link_to_root"):
        guard = RootConfinement(base)
        for path in paths + [Path(str(p).replace(str(root), str(base))) for p in paths]:
            for _ in range(2):  # the second answer comes from the resolved-folder cache
                assert guard.outside_reason(path) == outside_root_reason(path, base), path
        copy = pickle.loads(pickle.dumps(guard))
        assert copy.root == str(base) and copy._real_dirs == {}  # caches are not shipped to other nodes
    assert RootConfinement(root).outside_reason(root / "Annotations" / "b.jpg") is not None


@pytest.mark.parametrize("kind", sorted(SPECIAL_KINDS))
def test_special_files_are_refused_by_type_without_being_opened(tmp_path: Path, kind: str) -> None:
    path = make_special(tmp_path / "data" / "a.jpg", kind)
    reason = special_file_reason(path)
    assert reason is not None and reason.startswith(f"{path} is {NOT_REGULAR} but {SPECIAL_KINDS[kind]}: ")
    # A FIFO with no writer blocks a plain open(); /dev/zero never ends: both must fail at once.
    with pytest.raises(NotRegularFileError) as err:
        finishes_within(10, lambda: read_regular_file(path))
    assert SPECIAL_KINDS[kind] in err.value.strerror and err.value.filename == str(path)
    assert isinstance(err.value, OSError)  # so every reader's "cannot read" branch reports it
    assert dataset_file_reason(path, tmp_path / "data") == reason


def test_regular_files_and_links_to_them_are_read(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8 data")
    os.symlink("a.jpg", tmp_path / "link.jpg")
    for name in ("a.jpg", "link.jpg"):
        assert special_file_reason(tmp_path / name) is None
        assert read_regular_file(tmp_path / name) == b"\xff\xd8 data"
    assert special_file_reason(tmp_path / "missing.jpg") is None  # the reader's open names a missing file
    with pytest.raises(FileNotFoundError):
        read_regular_file(tmp_path / "missing.jpg")


def test_a_fifo_swapped_in_after_the_check_is_caught_on_the_descriptor(tmp_path: Path, monkeypatch) -> None:
    """The race: stat saw a regular file, then a FIFO took its place. The non-blocking open returns at
    once and fstat refuses it."""
    path = make_special(tmp_path / "a.xml", "fifo")
    regular = os.stat(__file__)
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: regular)  # what a stat before the swap saw
    with pytest.raises(NotRegularFileError, match="named pipe"):
        finishes_within(10, lambda: open_regular(path))


def test_file_kind_names_every_type_of_stat() -> None:
    assert file_kind(stat.S_IFREG | 0o644) == "a regular file"
    assert file_kind(stat.S_IFBLK | 0o660) == "a block device"  # no block device to make in a container
    assert file_kind(stat.S_IFCHR | 0o666) == "a character device"
    assert file_kind(stat.S_IFIFO | 0o644) == "a named pipe (FIFO)"
    assert file_kind(stat.S_IFSOCK | 0o755) == "a socket"
    assert file_kind(stat.S_IFDIR | 0o755) == "a directory"


def test_the_type_is_checked_before_the_root(tmp_path: Path) -> None:
    """A link out of the root to a device is named as a device; one to a regular file as outside."""
    root = tmp_path / "root"
    make_special(root / "zero.jpg", "dev_zero")
    (tmp_path / "photo.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "photo.jpg", root / "out.jpg")
    for confine in (root, RootConfinement(root)):
        assert "a character device" in dataset_file_reason(root / "zero.jpg", confine)
        assert OUTSIDE_ROOT in dataset_file_reason(root / "out.jpg", confine)
    assert dataset_file_reason(root / "out.jpg", None) is None
