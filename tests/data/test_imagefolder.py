"""yolov2/data/imagefolder.py: a class-folder tree with every kind of bad entry made in tmp_path; each becomes a
reject naming the file and the reason (never a crash, never a silent skip), the good images become samples."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from corpus.special import finishes_within, make_special
from yolov2.data import images as images_module
from yolov2.data.imagefolder import scan_image_folder
from yolov2.errors import DatasetError


def encoded(fmt: str, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/cat: 3 good images and one of each bad kind; root/dog: one image; empty and all-bad class folders,
    a stray file, a hidden folder and a class folder linked from outside the root."""
    root = tmp_path / "root"
    jpeg = encoded("JPEG")
    cat = root / "cat"
    write(cat / "a.jpg", jpeg)
    write(cat / "b.png", encoded("PNG", 1))
    write(root / "dog" / "c.jpg", encoded("JPEG", 2))
    os.symlink("../dog/c.jpg", cat / "link_in.jpg")  # a link that stays inside the root: fine
    write(cat / "zero.jpg", b"")
    write(cat / "truncated.jpg", jpeg[: len(jpeg) - 10])  # cut in the scan data: no end-of-image marker
    write(cat / "text.jpg", b"just some text, not pixels\n")
    write(cat / "readme.txt", b"notes")
    write(cat / "png_named.jpg", encoded("PNG", 3))
    make_special(cat / "pipe.jpg", "fifo")
    (cat / "sub").mkdir()
    write(tmp_path / "outside" / "secret.jpg", jpeg)
    os.symlink(tmp_path / "outside" / "secret.jpg", cat / "link_out.jpg")
    os.symlink(cat / "missing.jpg", cat / "dangling.jpg")
    write(Path(os.fsdecode(os.fsencode(cat) + b"/bad_\xff.jpg")), jpeg)
    write(cat / "locked.jpg", jpeg)  # made unreadable in the test (the tests run as root: chmod would not stop it)
    (root / "empty").mkdir()
    write(root / "allbad" / "zero.jpg", b"")
    write(root / "stray.jpg", jpeg)
    (root / ".ipynb_checkpoints").mkdir()
    os.symlink(tmp_path / "outside", root / "linked_class")
    return root


def test_scan_keeps_good_images_and_names_every_bad_entry(tree: Path, monkeypatch):
    real_read = images_module.read_regular_file

    def read(path):
        if Path(path).name == "locked.jpg":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_read(path)

    monkeypatch.setattr(images_module, "read_regular_file", read)
    scan = finishes_within(20, lambda: scan_image_folder(tree, split="train"))

    assert scan.class_names == ["cat", "dog"]
    got = [(Path(s.path).relative_to(tree).as_posix(), s.label) for s in scan.samples]
    assert got == [("cat/a.jpg", 0), ("cat/b.png", 0), ("cat/link_in.jpg", 0), ("dog/c.jpg", 1)]

    reasons = {Path(os.fsencode(r.source).decode("utf-8", "replace")).name: r.reason for r in scan.rejects}
    expected = {
        "zero.jpg": "empty (zero bytes)",
        "truncated.jpg": "JPEG",
        "text.jpg": "not an image",
        "readme.txt": "not an image file name (extension '.txt'",
        "png_named.jpg": "content is PNG but the file png_named.jpg is named .jpg",
        "pipe.jpg": "a named pipe (FIFO)",
        "sub": "a folder inside a class folder",
        "link_out.jpg": "points outside the dataset root",
        "dangling.jpg": "missing",
        "bad_\\xff.jpg": "not valid UTF-8",
        "locked.jpg": "cannot read image file (Permission denied)",
        "empty": "class folder holds no usable image: it is empty (class left out)",
        "allbad": "class folder holds no usable image: its 1 entries were rejected (class left out)",
        "stray.jpg": "file directly under the image folder root",
        ".ipynb_checkpoints": "hidden entry",
        "linked_class": "points outside the dataset root",
    }
    assert set(reasons) == set(expected)
    for name, words in expected.items():
        assert words in reasons[name], (name, reasons[name])
    assert all(r.level == "image" and r.split == "train" for r in scan.rejects)
    assert len(scan.rejects) == len(expected) + 1  # allbad/zero.jpg shares zero.jpg's name: one more reject

    # Counting: every entry of root and of the scanned class folders is a sample, a reject or a scanned folder.
    scanned = [tree / name for name in ("cat", "dog", "empty", "allbad")]
    entries = len(os.listdir(tree)) - len(scanned) + sum(len(os.listdir(folder)) for folder in scanned)
    assert entries + 2 == len(scan.samples) + len(scan.rejects)  # + the rejects of the empty and all-bad folders


def test_given_class_names_fix_the_labels_and_reject_unknown_folders(tmp_path: Path):
    root = tmp_path / "val"
    for name in ("dog", "cat", "horse"):
        write(root / name / f"{name}.jpg", encoded("JPEG"))
    scan = scan_image_folder(root, class_names=["dog", "cat", "zebra"])
    assert scan.class_names == ["dog", "cat", "zebra"]
    assert [(Path(s.path).name, s.label) for s in scan.samples] == [("dog.jpg", 0), ("cat.jpg", 1)]
    assert [(Path(r.source).name, r.reason) for r in scan.rejects] == [
        ("horse", "class folder 'horse' is not among the 3 given class names (folder not read)")
    ]


def test_a_class_folder_that_cannot_be_listed_is_a_reject(tmp_path: Path, monkeypatch):
    root = tmp_path / "root"
    write(root / "cat" / "a.jpg", encoded("JPEG"))
    write(root / "dog" / "b.jpg", encoded("JPEG"))
    real_listdir = os.listdir

    def listdir(path):
        if Path(path).name == "dog":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    scan = scan_image_folder(root)
    assert scan.class_names == ["cat"] and len(scan.samples) == 1
    assert [(Path(r.source).name, r.reason) for r in scan.rejects] == [
        ("dog", "cannot list class folder (Permission denied)")
    ]


def test_strict_raises_on_the_first_bad_file_and_a_missing_root_is_an_error(tmp_path: Path):
    root = tmp_path / "root"
    write(root / "cat" / "a.jpg", encoded("JPEG"))
    write(root / "cat" / "b.jpg", b"")
    with pytest.raises(DatasetError, match=r"b\.jpg: image file is empty"):
        scan_image_folder(root, strict=True)
    assert len(scan_image_folder(root).samples) == 1
    with pytest.raises(DatasetError, match="image folder not found"):
        scan_image_folder(tmp_path / "nowhere")
