"""yolov2/data/paths.py: file names that are not UTF-8, and symlinks leading out of a dataset root.

References: the bytes the file system really holds (``os.listdir`` on bytes), and links made here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa

import pickle

from yolov2.data.paths import (
    OUTSIDE_ROOT,
    RootConfinement,
    is_utf8_text,
    not_utf8_reason,
    outside_root_reason,
    printable,
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
    for name, target in (("out.jpg", secret), ("dangling_out.jpg", tmp_path / "nowhere.jpg"),
                         ("sibling.jpg", sibling / "b.jpg")):
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
