"""yolov2/metrics/detections.py: the detection table's Arrow/Parquet round trip and its checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from yolov2.data.records import ImageRecord
from yolov2.errors import DatasetError
from yolov2.metrics.detections import DETECTION_SCHEMA, DetectionTable, GroundTruthArrays, resolve_detections


def test_parquet_round_trip_keeps_rows_and_order(tmp_path: Path):
    dets = DetectionTable.from_arrays(
        ["b", "a", "b"], [2, 0, 1], [0.5, 0.9, 0.5], [[1, 2, 3, 4], [0, 0, 1.5, 2.25], [5, 6, 7, 8]]
    )
    pq.write_table(dets.to_arrow(), tmp_path / "d.parquet")
    table = pq.read_table(tmp_path / "d.parquet")
    assert table.schema.equals(DETECTION_SCHEMA)
    back = DetectionTable.from_arrow(table)
    assert back.image_id.tolist() == ["b", "a", "b"]
    np.testing.assert_array_equal(back.label, [2, 0, 1])
    np.testing.assert_array_equal(back.score, [0.5, 0.9, 0.5])
    np.testing.assert_array_equal(back.boxes, dets.boxes)
    assert len(DetectionTable.from_arrow(DetectionTable.empty().to_arrow())) == 0


def test_missing_column_and_bad_shapes_are_errors():
    table = pa.table({"image_id": ["a"], "label": [0], "score": [0.5], "x1": [0.0], "y1": [0.0], "x2": [1.0]})
    with pytest.raises(DatasetError, match=r"lacks columns \['y2'\]"):
        DetectionTable.from_arrow(table)
    with pytest.raises(DatasetError, match="column score"):
        DetectionTable(np.array(["a"], object), np.zeros(1, np.int64), np.zeros(2), np.zeros((1, 4)))


def test_resolve_detections_maps_ids_and_rejects_bad_rows():
    records = [ImageRecord("x", "t", "", 10, 10), ImageRecord("y", "t", "", 10, 10)]
    dets = DetectionTable.from_arrays(["y", "x", "y"], [0, 1, 0], [0.1, 0.2, 0.3], np.ones((3, 4)))
    np.testing.assert_array_equal(resolve_detections(dets, records, 2), [1, 0, 1])
    bad = DetectionTable.from_arrays(["x"], [0], [float("nan")], [[0, 0, 1, 1]])
    with pytest.raises(DatasetError, match="non-finite"):
        resolve_detections(bad, records, 2)
    with pytest.raises(DatasetError, match="appears twice"):
        resolve_detections(dets, records + [ImageRecord("x", "t", "", 10, 10)], 2)


def test_ground_truth_arrays_flatten_in_record_order():
    records = [
        ImageRecord("a", "t", "", 10, 10, [[0, 0, 1, 1], [1, 1, 2, 2]], [3, 1], [False, True], [False, False]),
        ImageRecord("b", "t", "", 10, 10),
        ImageRecord("c", "t", "", 10, 10, [[2, 2, 3, 3]], [0], [False], [True]),
    ]
    gt = GroundTruthArrays.from_records(records)
    assert gt.image.tolist() == [0, 0, 2] and gt.label.tolist() == [3, 1, 0]
    assert gt.difficult.tolist() == [False, True, False] and gt.iscrowd.tolist() == [False, False, True]
    assert gt.boxes.dtype == np.float64 and gt.boxes[2].tolist() == [2, 2, 3, 3]
    assert len(GroundTruthArrays.from_records([ImageRecord("z", "t", "", 1, 1)]).label) == 0
