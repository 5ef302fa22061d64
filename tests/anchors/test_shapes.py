"""Tests of yolov2/anchors/shapes.py: box shapes from the records table (VOC XML, COCO JSON) and their validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from anchors.reference import voc_records
from yolov2 import anchors as A
from yolov2.data.records import ImageRecord, records_to_table
from yolov2.errors import DatasetError


def test_box_shapes_from_voc_table_match_the_xml(voc_images, voc_wh):
    table = records_to_table(voc_records(voc_images), ["thing"])
    wh = A.box_shapes_from_table(table)
    assert wh.shape == (273, 2)
    np.testing.assert_allclose(wh, voc_wh, rtol=1e-12, atol=0)
    n_difficult = sum(o[4] for im in voc_images for o in im["objects"])
    assert n_difficult == 38
    easy = A.box_shapes_from_table(table, include_difficult=False)
    expected_easy = [
        ((o[2] - o[0] + 1) / im["width"], (o[3] - o[1] + 1) / im["height"])
        for im in voc_images
        for o in im["objects"]
        if not o[4]
    ]
    np.testing.assert_allclose(easy, expected_easy, rtol=1e-12, atol=0)


def test_box_shapes_exclude_coco_crowd_boxes(shared_data: Path):
    data = json.loads((shared_data / "coco_tiny" / "annotations" / "instances_train2017.json").read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    records, expected = [], []
    for im in data["images"]:
        anns = by_image.get(im["id"], [])
        records.append(
            ImageRecord(
                image_id=str(im["id"]),
                split="train",
                path=im["file_name"],
                width=im["width"],
                height=im["height"],
                boxes=[
                    (a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]) for a in anns
                ],
                labels=[0] * len(anns),
                difficult=[False] * len(anns),
                iscrowd=[bool(a["iscrowd"]) for a in anns],
            )
        )
        for a in anns:
            if not a["iscrowd"]:
                x1, y1 = np.float32(a["bbox"][0]), np.float32(a["bbox"][1])
                x2 = np.float32(a["bbox"][0] + a["bbox"][2])
                y2 = np.float32(a["bbox"][1] + a["bbox"][3])
                expected.append(((float(x2) - float(x1)) / im["width"], (float(y2) - float(y1)) / im["height"]))
    table = records_to_table(records, ["thing"])
    # index.parquet has extra columns; they must be ignored
    table = table.append_column("shard", pa.array(["train-000000.tar"] * len(table)))
    wh = A.box_shapes_from_table(table)
    assert sum(a["iscrowd"] for a in data["annotations"]) > 0
    assert len(wh) == len(expected) == sum(not a["iscrowd"] for a in data["annotations"])
    np.testing.assert_allclose(wh, expected, rtol=1e-12, atol=0)


def test_box_shapes_reject_a_zero_size_box_naming_the_image():
    def record(image_id: str, boxes: list) -> ImageRecord:
        n = len(boxes)
        return ImageRecord(image_id, "train", f"{image_id}.jpg", 100, 50, boxes, [0] * n, [False] * n, [False] * n)

    good = record("img-ok", [(0, 0, 10, 10)])
    bad = record("img-flat", [(0, 0, 10, 10), (5, 5, 5, 20)])
    table = records_to_table([good, bad], ["thing"])
    with pytest.raises(DatasetError, match=r"img-flat.*box 1"):
        A.box_shapes_from_table(table)
    with pytest.raises(DatasetError, match="missing column"):
        A.box_shapes_from_table(table.drop_columns(["width"]))


@pytest.mark.parametrize("bad", [0.0, -0.1, np.nan, np.inf])
def test_zero_negative_or_non_finite_sizes_are_rejected_before_clustering(voc_wh, bad):
    wh = voc_wh.copy()
    wh[17, 1] = bad
    with pytest.raises(DatasetError, match="box 17"):
        A.kmeans_anchors(wh, 5)
    with pytest.raises(DatasetError, match="box 17"):
        A.kmeans_pp_init(wh, 5, np.random.default_rng(0))
