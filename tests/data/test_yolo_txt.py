"""yolov2/data/yolo_txt.py: round trips from the real VOC sets, and broken label files made here.

Reference: the normalised -> pixel conversion written out in the test (x1 = (cx - w/2) * W ...).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from corpus.special import SPECIAL_KINDS, finishes_within, make_special
from yolov2.data.records import ImageRecord, Reject
from yolov2.data.voc import VOC_CLASSES, read_voc
from yolov2.data.yolo_txt import read_yolo_txt, write_yolo_txt
from yolov2.errors import DatasetError
from yolov2.io import read_names


def image_level(rejects: list[Reject]) -> list[Reject]:
    return [r for r in rejects if r.level == "image"]


def without_difficult(record: ImageRecord) -> ImageRecord:
    keep = ~record.difficult
    return ImageRecord(
        record.image_id,
        record.split,
        record.path,
        record.width,
        record.height,
        record.boxes[keep],
        record.labels[keep],
        record.difficult[keep],
        record.iscrowd[keep],
        record.clipped_boxes,
    )


def assert_records_close(got: list[ImageRecord], want: list[ImageRecord]) -> None:
    assert [r.image_id for r in got] == [r.image_id for r in want]
    for g, w in zip(got, want):
        assert (g.path, g.width, g.height, g.split, g.clipped_boxes) == (
            w.path,
            w.width,
            w.height,
            w.split,
            w.clipped_boxes,
        )
        assert g.labels.tolist() == w.labels.tolist()
        assert g.difficult.tolist() == w.difficult.tolist() and g.iscrowd.tolist() == w.iscrowd.tolist()
        # 6 decimals of normalised coordinates: at most 1e-6 of the image size off
        scale = np.array([w.width, w.height, w.width, w.height], np.float64)
        np.testing.assert_array_less(np.abs(g.boxes.astype(np.float64) - w.boxes) / scale, 1e-6 + 1e-7)


@pytest.mark.parametrize("dataset, names", [("voc100", VOC_CLASSES), ("raccoon", ("raccoon",))])
def test_voc_records_to_yolo_txt_and_back(shared_data: Path, tmp_path: Path, dataset: str, names) -> None:
    root = shared_data / dataset
    records, _ = read_voc(root, None, class_names=names)
    skipped = write_yolo_txt(records, names, tmp_path / "labels", tmp_path / "obj.names")
    n_difficult = sum(int(r.difficult.sum()) for r in records)
    assert skipped == n_difficult  # Darknet's voc_label.py leaves difficult boxes out
    assert read_names(tmp_path / "obj.names") == list(names)
    again, rejects = read_yolo_txt(root / "JPEGImages", tmp_path / "labels", names, "all")
    assert rejects == []
    assert len(again) == len(records) + len(image_level(rejects))
    assert_records_close(again, [without_difficult(r) for r in records])

    # with the difficult boxes written too, they come back as ordinary boxes (the format has no flag)
    write_yolo_txt(records, names, tmp_path / "all_labels", skip_difficult=False)
    again, _ = read_yolo_txt(root / "JPEGImages", tmp_path / "all_labels", names, "all")
    assert sum(r.num_boxes for r in again) == sum(r.num_boxes for r in records)
    assert not any(r.difficult.any() for r in again)


def test_a_label_line_converts_as_darknet_defines_it(tmp_path: Path) -> None:
    image_dir, label_dir = tmp_path / "images", tmp_path / "labels"
    image_dir.mkdir()
    label_dir.mkdir()
    Image.new("RGB", (200, 100)).save(image_dir / "a.jpg")
    (label_dir / "a.txt").write_text("1 0.25 0.5 0.1 0.4\n\n0 0.5 0.5 1 1\n")
    records, rejects = read_yolo_txt(image_dir, label_dir, ["cat", "dog"], "train")
    assert rejects == []
    (r,) = records
    cx, cy, w, h = 0.25, 0.5, 0.1, 0.4
    expected = [[(cx - w / 2) * 200, (cy - h / 2) * 100, (cx + w / 2) * 200, (cy + h / 2) * 100], [0, 0, 200, 100]]
    np.testing.assert_allclose(r.boxes, expected, rtol=0, atol=1e-4)
    assert r.labels.tolist() == [1, 0] and r.clipped_boxes == 0
    assert (r.image_id, r.width, r.height, r.split) == ("a", 200, 100, "train")


def make_yolo(tmp_path: Path, labels: dict[str, str | None], size: tuple[int, int] = (80, 60)) -> tuple[Path, Path]:
    image_dir, label_dir = tmp_path / "images", tmp_path / "labels"
    image_dir.mkdir(exist_ok=True)
    label_dir.mkdir(exist_ok=True)
    for stem, text in labels.items():
        Image.new("RGB", size, (40, 80, 120)).save(image_dir / f"{stem}.jpg", "JPEG")
        if text is not None:
            (label_dir / f"{stem}.txt").write_text(text, encoding="utf-8")
    return image_dir, label_dir


GOOD = "0 0.5 0.5 0.25 0.5\n"


@pytest.mark.parametrize(
    "line, words, unknown",
    [
        ("0 0.5 0.5 0.25\n", "4 columns, expected 5", None),
        ("0 0.5 0.5 0.25 0.5 0.1 0.2\n", "7 columns, expected 5", None),
        ("0 1.5 0.5 0.25 0.5\n", "outside [0, 1]", None),
        ("0 -0.1 0.5 0.25 0.5\n", "outside [0, 1]", None),
        ("0 nan 0.5 0.25 0.5\n", "non-finite", None),
        ("3 0.5 0.5 0.25 0.5\n", "unknown class id 3", "3"),
        ("3.0 0.5 0.5 0.25 0.5\n", "unknown class id 3.0", "3"),
        ("-1 0.5 0.5 0.25 0.5\n", "unknown class id -1", "-1"),
        ("1.5 0.5 0.5 0.25 0.5\n", "unknown class id 1.5", None),  # not a class id at all
        ("inf 0.5 0.5 0.25 0.5\n", "unknown class id inf", None),
        ("cat 0.5 0.5 0.25 0.5\n", "not a number", None),
        ("0 0.5 0.5 0 0.5\n", "zero-area box", None),
    ],
)
def test_bad_lines_are_box_rejects_naming_file_and_line(
    tmp_path: Path, line: str, words: str, unknown: str | None
) -> None:
    image_dir, label_dir = make_yolo(tmp_path, {"img": GOOD + line})
    records, rejects = read_yolo_txt(image_dir, label_dir, ["a", "b", "c"], "train")
    assert len(records) == 1 and records[0].num_boxes == 1
    assert len(records) + len(image_level(rejects)) == 1
    (reject,) = rejects
    assert reject.level == "box" and reject.source.endswith("labels/img.txt") and reject.image_id == "img"
    assert reject.reason.startswith("line 2: ") and words in reject.reason, reject
    assert reject.unknown_class == unknown  # an integer id outside the names, counted by the shard stage
    with pytest.raises(DatasetError, match=r"labels/img.txt: line 2"):
        read_yolo_txt(image_dir, label_dir, ["a", "b", "c"], "train", strict=True)


def test_box_overhanging_the_edge_is_clipped_and_counted(tmp_path: Path) -> None:
    image_dir, label_dir = make_yolo(tmp_path, {"img": "0 0.9 0.5 0.4 0.5\n0 0.5 0.5 0.5 0.4\n"})
    records, rejects = read_yolo_txt(image_dir, label_dir, ["a"], "train")
    assert rejects == [] and records[0].clipped_boxes == 1 and len(records) == 1
    np.testing.assert_allclose(records[0].boxes[0], [0.7 * 80, 0.25 * 60, 80, 0.75 * 60], atol=1e-4)


def test_missing_label_is_an_empty_image_and_orphan_label_a_reject(tmp_path: Path) -> None:
    image_dir, label_dir = make_yolo(tmp_path, {"a": GOOD, "b": None, "c": ""})
    (label_dir / "ghost.txt").write_text(GOOD)
    records, rejects = read_yolo_txt(image_dir, label_dir, ["x"], "val")
    assert [(r.image_id, r.num_boxes) for r in records] == [("a", 1), ("b", 0), ("c", 0)]
    (reject,) = rejects
    assert reject.level == "image" and reject.source.endswith("ghost.txt") and "without an image" in reject.reason
    n_in = 3 + 1  # images + orphan label files
    assert n_in == len(records) + len(image_level(rejects))
    only, rejects = read_yolo_txt(image_dir, label_dir, ["x"], "val", images=["c.jpg", "a.jpg"])
    assert [r.image_id for r in only] == ["c", "a"] and rejects == []
    assert len(only) + len(image_level(rejects)) == 2


def test_bad_images_are_image_rejects(tmp_path: Path) -> None:
    image_dir, label_dir = make_yolo(tmp_path, {"ok": GOOD, "cut": GOOD, "fake": GOOD, "été_01": GOOD})
    data = (image_dir / "cut.jpg").read_bytes()
    (image_dir / "cut.jpg").write_bytes(data[: len(data) - 3])
    Image.new("RGB", (80, 60)).save(image_dir / "fake.jpg", "PNG")
    records, rejects = read_yolo_txt(image_dir, label_dir, ["x"], "val")
    assert sorted(r.image_id for r in records) == ["ok", "été_01"]
    by_id = {r.image_id: r for r in rejects}
    assert "truncated JPEG" in by_id["cut"].reason and by_id["cut"].source.endswith("cut.jpg")
    assert "content is PNG but the file fake.jpg is named .jpg" in by_id["fake"].reason
    assert len(records) + len(image_level(rejects)) == 4
    with pytest.raises(DatasetError, match="cut.jpg: truncated JPEG"):
        read_yolo_txt(image_dir, label_dir, ["x"], "val", strict=True)


def test_images_sharing_a_stem_are_ambiguous(tmp_path: Path) -> None:
    image_dir, label_dir = make_yolo(tmp_path, {"a": GOOD})
    Image.new("RGB", (80, 60)).save(image_dir / "a.png", "PNG")
    records, rejects = read_yolo_txt(image_dir, label_dir, ["x"], "val")
    assert records == [] and len(rejects) == 2 and all("ambiguous" in r.reason for r in rejects)
    assert len(records) + len(image_level(rejects)) == 2


def test_writer_refuses_colliding_stems(tmp_path: Path) -> None:
    recs = [ImageRecord("a", "t", "/x/a.jpg", 10, 10), ImageRecord("b", "t", "/y/a.png", 10, 10)]
    with pytest.raises(DatasetError, match="label files would collide"):
        write_yolo_txt(recs, ["x"], tmp_path)


def test_file_name_that_is_not_utf8_is_a_named_reject(tmp_path: Path) -> None:
    """The name's bytes are shown as \\xNN; the reject (and the records) stay writable as UTF-8 / Arrow."""
    import os

    from yolov2.data.records import rejects_to_table

    image_dir, label_dir = make_yolo(tmp_path, {"ok": GOOD})
    raw = os.fsencode(image_dir) + b"/bad_\xff\xfe.jpg"
    os.rename(image_dir / "ok.jpg", raw.decode("utf-8", "surrogateescape"))
    make_yolo(tmp_path, {"ok": GOOD})
    with open(os.fsencode(label_dir) + b"/bad_\xff\xfe.txt", "wb") as f:
        f.write(GOOD.encode())
    records, rejects = read_yolo_txt(image_dir, label_dir, ["x"], "val")
    assert [r.image_id for r in records] == ["ok"]
    (reject,) = rejects
    assert reject.level == "image" and reject.image_id == "bad_\\xff\\xfe"
    assert reject.source.endswith("bad_\\xff\\xfe.jpg") and "not valid UTF-8" in reject.reason
    assert rejects_to_table(rejects).num_rows == 1
    assert len(records) + len(image_level(rejects)) == 2
    with pytest.raises(DatasetError, match=r"bad_\\xff\\xfe.jpg"):
        read_yolo_txt(image_dir, label_dir, ["x"], "val", strict=True)


def test_confine_to_rejects_image_or_label_linked_from_outside(tmp_path: Path) -> None:
    import os

    root = tmp_path / "ds"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    image_dir, label_dir = make_yolo(root, {"ok": GOOD, "img_out": GOOD, "label_out": None})
    make_yolo(outside, {"photo": GOOD})
    (image_dir / "img_out.jpg").unlink()
    os.symlink(outside / "images" / "photo.jpg", image_dir / "img_out.jpg")
    os.symlink(outside / "labels" / "photo.txt", label_dir / "label_out.txt")
    records, rejects = read_yolo_txt(image_dir, label_dir, ["x"], "val", confine_to=root)
    assert [r.image_id for r in records] == ["ok"]
    by_id = {r.image_id: r for r in rejects}
    assert by_id["img_out"].source.endswith("images/img_out.jpg")
    assert by_id["label_out"].source.endswith("labels/label_out.txt")
    assert all(r.level == "image" and "points outside the dataset root" in r.reason for r in rejects)
    assert len(records) + len(image_level(rejects)) == 3
    records, rejects = read_yolo_txt(image_dir, label_dir, ["x"], "val")  # not confined: links are followed
    assert len(records) == 3 and rejects == []


@pytest.mark.parametrize("kind", sorted(SPECIAL_KINDS))
def test_image_label_or_names_file_that_is_not_a_regular_file_is_refused_by_type(tmp_path: Path, kind: str) -> None:
    image_dir, label_dir = make_yolo(tmp_path, {"a": GOOD, "b": GOOD, "c": GOOD})
    image = make_special(image_dir / "b.jpg", kind)  # listed whatever its type, never skipped silently
    label = make_special(label_dir / "c.txt", kind)
    records, rejects = finishes_within(10, lambda: read_yolo_txt(image_dir, label_dir, ["x"], "val"))
    assert [r.image_id for r in records] == ["a"]
    assert [(r.image_id, r.source) for r in rejects] == [("b", str(image)), ("c", str(label))]
    assert all(f"not a regular file but {SPECIAL_KINDS[kind]}" in r.reason for r in rejects)
    assert len(records) + len(image_level(rejects)) == 3
    with pytest.raises(DatasetError, match=f"b.jpg is not a regular file but {re.escape(SPECIAL_KINDS[kind])}"):
        finishes_within(10, lambda: read_yolo_txt(image_dir, label_dir, ["x"], "val", strict=True))
    names = make_special(tmp_path / "x.names", kind)
    with pytest.raises(DatasetError, match="x.names: cannot read names file"):
        finishes_within(10, lambda: read_names(names))
