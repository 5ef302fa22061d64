"""yolov2/io.py: atomic writes (all or nothing, no temporary file left, file modes) and the ``.names`` file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from yolov2.data.voc import VOC_CLASSES
from yolov2.errors import DatasetError
from yolov2.io import atomic_copy, atomic_output, atomic_write_bytes, atomic_write_text, read_names, write_names


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_replace_the_file_with_shared_permissions(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01" and _mode(target) == 0o644
    atomic_write_text(target, "é\n")
    assert target.read_bytes() == "é\n".encode() and _mode(target) == 0o644
    atomic_copy(target, tmp_path / "copy.txt")
    assert (tmp_path / "copy.txt").read_bytes() == target.read_bytes()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["copy.txt", "f.bin", "sub"]  # no temporary file left


def test_atomic_output_keeps_the_old_file_and_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="killed"), atomic_output(target, prefix=".tmp-", suffix=".pt") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".tmp-") and tmp.name.endswith(".pt")
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    with atomic_output(target, mode=None) as tmp:  # mode=None: mkstemp's private 0600 is kept
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and _mode(target) == 0o600


def test_names_files(shared_data: Path, tmp_path: Path) -> None:
    assert read_names(shared_data / "darknet_cfg" / "voc.names") == list(VOC_CLASSES)
    assert len(read_names(shared_data / "darknet_cfg" / "coco.names")) == 80
    write_names(["a", "b"], tmp_path / "x.names")
    assert (tmp_path / "x.names").read_text() == "a\nb\n"
    (tmp_path / "dup.names").write_text("a\nb\na\n")
    with pytest.raises(DatasetError, match="dup.names: names file repeats a"):
        read_names(tmp_path / "dup.names")
    (tmp_path / "empty.names").write_text("\n\n")
    with pytest.raises(DatasetError, match="lists no class names"):
        read_names(tmp_path / "empty.names")
