"""yolov2/data/records.py: the record <-> dict <-> Arrow conversions, validation and box sanitising.

The box sanitiser is compared with a plain per-box loop written from its docstring.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from yolov2.data.records import (
    BOX_TYPE,
    ImageRecord,
    Reject,
    class_names_of,
    class_only_record,
    record_schema,
    records_to_table,
    rejects_to_table,
    relabel_records,
    sanitize_box,
    sanitize_boxes,
    table_to_records,
    validate_record,
)
from yolov2.data.voc import VOC_CLASSES, read_voc
from yolov2.errors import DatasetError


def sample_record(**overrides) -> ImageRecord:
    fields = dict(
        image_id="été_01",
        split="train",
        path="/data/JPEGImages/été_01.jpg",
        width=100,
        height=80,
        boxes=[[0.5, 1.0, 20.25, 30.0], [10, 10, 100, 80]],
        labels=[3, 0],
        difficult=[False, True],
        iscrowd=[True, False],
        clipped_boxes=1,
    )
    fields.update(overrides)
    return ImageRecord(**fields)


def same(a: ImageRecord, b: ImageRecord) -> bool:
    return a.to_dict() == b.to_dict()


def test_record_coerces_dtypes_and_shapes() -> None:
    r = sample_record()
    assert r.boxes.dtype == np.float32 and r.boxes.shape == (2, 4)
    assert r.labels.dtype == np.int32 and r.difficult.dtype == bool and r.iscrowd.dtype == bool
    assert r.num_boxes == 2
    empty = ImageRecord("e", "val", "/e.jpg", 5, 5)
    assert empty.boxes.shape == (0, 4) and empty.num_boxes == 0
    with pytest.raises(ValueError):
        sample_record(labels=[1])  # one label for two boxes


def test_dict_form_is_plain_json_and_round_trips() -> None:
    r = sample_record()
    text = json.dumps(r.to_dict(), ensure_ascii=False)
    row = json.loads(text)
    assert row["boxes"][0] == {
        "x1": 0.5,
        "y1": 1.0,
        "x2": 20.25,
        "y2": 30.0,
        "label": 3,
        "difficult": False,
        "iscrowd": True,
    }
    back = ImageRecord.from_dict(row)
    assert same(back, r)
    np.testing.assert_array_equal(back.boxes, r.boxes)
    assert same(
        ImageRecord.from_dict({**row, "boxes": []}), sample_record(boxes=[], labels=[], difficult=[], iscrowd=[])
    )


def test_table_has_the_schema_and_class_names_and_round_trips(tmp_path: Path) -> None:
    records = [
        sample_record(),
        sample_record(image_id="b", boxes=np.zeros((0, 4)), labels=[], difficult=[], iscrowd=[]),
    ]
    names = ["a", "b", "c", "d"]
    table = records_to_table(records, names)
    assert table.schema.equals(record_schema(names), check_metadata=True)
    assert table.schema.field("boxes").type == pa.list_(BOX_TYPE)
    assert class_names_of(table) == names and class_names_of(table.schema) == names
    assert table.column("width").to_pylist() == [100, 100]
    assert [len(b) for b in table.column("boxes").to_pylist()] == [2, 0]
    pq.write_table(table, tmp_path / "index.parquet")
    read = pq.read_table(tmp_path / "index.parquet")
    assert class_names_of(read) == names
    back = table_to_records(read.append_column("shard", pa.array(["s0", "s0"])))  # extra columns ignored
    assert all(same(a, b) for a, b in zip(back, records)) and len(back) == 2


def test_table_without_class_names_is_an_error() -> None:
    with pytest.raises(DatasetError, match="no class_names metadata"):
        class_names_of(pa.table({"image_id": ["a"]}))


def test_voc100_records_survive_parquet(shared_data: Path, tmp_path: Path) -> None:
    records, _ = read_voc(shared_data / "voc100", "test")
    pq.write_table(records_to_table(records, VOC_CLASSES), tmp_path / "r.parquet")
    table = pq.read_table(tmp_path / "r.parquet")
    assert table.num_rows == 100 and class_names_of(table) == list(VOC_CLASSES)
    back = table_to_records(table)
    assert [r.to_dict() for r in back] == [r.to_dict() for r in records]
    assert sum(len(b) for b in table.column("boxes").to_pylist()) == 273


def test_rejects_table() -> None:
    rejects = [
        Reject("a.xml", "malformed XML", "image", "a", "train"),
        Reject("b.xml", "zero-area box", "box"),
        Reject("c.xml", "object 0 (dog): unknown class name 'dog'", "box", "c", "train", unknown_class="dog"),
    ]
    table = rejects_to_table(rejects)
    assert table.column_names == ["source", "reason", "level", "image_id", "split", "unknown_class"]
    assert table.to_pylist()[1] == {
        "source": "b.xml",
        "reason": "zero-area box",
        "level": "box",
        "image_id": None,
        "split": None,
        "unknown_class": None,
    }
    assert table.column("unknown_class").to_pylist() == [None, None, "dog"]
    assert rejects_to_table([]).num_rows == 0


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({}, None),
        ({"width": 0}, "not positive"),
        ({"image_id": ""}, "empty image_id"),
        ({"boxes": [[0, 0, 10, 10], [5, 5, 5, 9]]}, "zero or negative area"),
        ({"boxes": [[0, 0, 10, 10], [5, 5, 101, 9]]}, "outside the image"),
        ({"boxes": [[0, 0, 10, 10], [-1, 5, 10, 9]]}, "outside the image"),
        ({"boxes": [[0, 0, 10, 10], [np.nan, 5, 10, 9]]}, "non-finite"),
        ({"labels": [4, 0]}, "outside 0..3"),
    ],
)
def test_validate_record(overrides: dict, words: str | None) -> None:
    problems = validate_record(sample_record(**overrides), num_classes=4)
    if words is None:
        assert problems == []
    else:
        assert any(words in p for p in problems), problems


def reference_sanitize(box: list[float], width: int, height: int) -> tuple[list[float], bool, str]:
    """One box, by the docstring: clip to the image; say why an unusable box must go."""
    x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in box):
        return box, False, "non-finite"
    if x2 < x1 or y2 < y1:
        return box, False, "inverted"
    c = [min(max(x1, 0), width), min(max(y1, 0), height), min(max(x2, 0), width), min(max(y2, 0), height)]
    changed = any(abs(a - b) > 1e-6 for a, b in zip(c, box))
    if c[2] - c[0] <= 0 or c[3] - c[1] <= 0:
        had_area = x2 - x1 > 0 and y2 - y1 > 0
        return c, False, "entirely outside" if (changed and had_area) else "zero-area"
    return c, changed, ""


def test_sanitize_boxes_matches_a_plain_loop() -> None:
    rng = np.random.default_rng(0)
    width, height = 100, 80
    boxes = rng.integers(-30, 130, (400, 4)).astype(np.float64)
    boxes[::7, 2] = boxes[::7, 0]  # zero width
    boxes[::11, 3] = boxes[::11, 1] - 3  # inverted
    boxes[::13, 1] = np.nan
    boxes[::17, 2] = np.inf
    boxes[5] = [110, 10, 130, 20]  # right of the image
    boxes[6] = [10, -20, 20, -5]  # above it
    boxes[8] = [10, 10, 50, 60]  # inside
    clipped, was_clipped, reasons = sanitize_boxes(boxes, width, height)
    assert clipped.dtype == np.float32 and clipped.shape == (400, 4)
    kinds = {"non-finite": 0, "inverted": 0, "entirely outside": 0, "zero-area": 0, "": 0}
    for i, box in enumerate(boxes.tolist()):
        ref_box, ref_clipped, ref_reason = reference_sanitize(box, width, height)
        kinds[ref_reason] += 1
        if ref_reason:
            assert ref_reason in reasons[i], (i, box, reasons[i])
            assert not was_clipped[i]
        else:
            assert reasons[i] == "", (i, box, reasons[i])
            assert was_clipped[i] == ref_clipped, (i, box)
            np.testing.assert_array_equal(clipped[i], np.array(ref_box, np.float32))
    assert all(n > 0 for n in kinds.values()), kinds  # every branch was exercised
    assert reasons[5] == reasons[6] == "box entirely outside the image"
    assert reasons[8] == "" and not was_clipped[8]


def test_sanitize_box_gives_exactly_what_sanitize_boxes_gives() -> None:
    rng = np.random.default_rng(1)
    width, height = 100, 80
    boxes = np.round(rng.uniform(-40, 140, (3000, 4)), int(rng.integers(0, 3)))
    boxes[::5, 2] = boxes[::5, 0]  # zero width
    boxes[::9, 3] = boxes[::9, 1] - 0.5  # inverted
    boxes[::13, 1] = np.nan
    boxes[::17, 2] = np.inf
    boxes[::19, 0] = -np.inf
    boxes[::23] = [0.0, -0.0, 100.0, 80.0]  # exactly the image, with a negative zero
    clipped, was_clipped, reasons = sanitize_boxes(boxes, width, height)
    for i, box in enumerate(boxes.tolist()):
        one, one_clipped, one_reason = sanitize_box(tuple(box), width, height)
        assert one_reason == reasons[i], (i, box)
        if not one_reason:
            assert one_clipped == was_clipped[i], (i, box)
            assert np.array(one, np.float32).tobytes() == clipped[i].tobytes(), (i, box)  # bit for bit
    assert len(set(reasons.tolist())) == 5  # every outcome was exercised


def test_class_only_records_round_trip_and_plain_ones_stay_as_they_were():
    record = class_only_record("n01", "train", "crops/n01.jpg", 40, 30, label=7)
    assert record.class_only and record.boxes.tolist() == [[0, 0, 40, 30]] and record.labels.tolist() == [7]
    stored = record.to_dict()
    assert stored["class_only"] is True and ImageRecord.from_dict(stored).to_dict() == stored
    plain = ImageRecord("d01", "train", "d01.jpg", 40, 30, [[1, 2, 3, 4]], [0], [False], [False])
    assert "class_only" not in plain.to_dict() and not ImageRecord.from_dict(plain.to_dict()).class_only
    with pytest.raises(ValueError, match="n02: a classification-only record has one box"):
        ImageRecord("n02", "train", "n02.jpg", 40, 30, [[1, 2, 3, 4], [5, 6, 7, 8]], [0, 1], class_only=True)


def test_relabel_records_maps_labels_and_drops_the_unmapped_boxes():
    record = ImageRecord(
        "i", "test", "i.jpg", 50, 50, [[0, 0, 9, 9], [1, 1, 5, 5], [2, 2, 8, 8]], [0, 2, 1], [False, True, False],
        [False, False, True],
    )  # fmt: skip
    (mapped,) = relabel_records([record], [1, -1, 0])
    assert mapped.labels.tolist() == [1, 0] and mapped.boxes.tolist() == [[0, 0, 9, 9], [1, 1, 5, 5]]
    assert mapped.difficult.tolist() == [False, True] and mapped.iscrowd.tolist() == [False, False]
    assert record.labels.tolist() == [0, 2, 1]  # the input is left as it was
