"""yolov2/metrics/formats.py: files written by hand here, and the real metric_cases / voc100 files read
back with plain ElementTree / json as the reference."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from yolov2.errors import DatasetError
from yolov2.metrics.formats import (
    read_coco_results_arrays,
    read_detections,
    read_ground_truth,
    text_boxes_to_records,
)
from yolov2.metrics.voc import voc_evaluate


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_text_box_conventions():
    boxes = np.array([[10.0, 20.0, 5.0, 8.0]])
    # xywh -> (10, 20, 15, 28); VOC inclusive pixels -> left/top minus 1
    np.testing.assert_array_equal(text_boxes_to_records(boxes, "xywh", "voc"), [[9, 19, 15, 28]])
    np.testing.assert_array_equal(text_boxes_to_records(boxes, "xywh", "continuous"), [[10, 20, 15, 28]])
    np.testing.assert_array_equal(text_boxes_to_records(boxes, "xyxy", "continuous"), [[10, 20, 5, 8]])


def test_text_ground_truth_and_detections(tmp_path: Path):
    gt_dir = write(
        tmp_path / "gt", {"img1.txt": "dog 10 20 5 8\ncat 0 0 4 4 difficult\n", "img2.txt": "", "img3.txt": "\n"}
    )
    det_dir = write(
        tmp_path / "dets", {"img1.txt": "cat 0.5 1 1 3 3\n\ndog .9 10 20 5 8\n", "img2.txt": "dog 0.1 0 0 1 1\n"}
    )
    gt = read_ground_truth(gt_dir)
    assert gt.class_names == ("cat", "dog") and gt.kind == "text"
    assert [r.image_id for r in gt.records] == ["img1", "img2", "img3"]
    r1 = gt.records[0]
    np.testing.assert_array_equal(r1.boxes, [[9, 19, 15, 28], [-1, -1, 4, 4]])
    assert r1.labels.tolist() == [1, 0] and r1.difficult.tolist() == [False, True]
    assert gt.records[1].num_boxes == 0 and gt.records[2].num_boxes == 0
    dets = read_detections(det_dir, gt)
    assert dets.image_id.tolist() == ["img1", "img1", "img2"]
    assert dets.label.tolist() == [0, 1, 1]
    np.testing.assert_array_equal(dets.score, [0.5, 0.9, 0.1])
    np.testing.assert_array_equal(dets.boxes[1], [9, 19, 15, 28])
    result = voc_evaluate(gt.records, dets, gt.class_names)
    assert result.ap[1] == 1.0 and result.npos.tolist() == [0, 1]


def test_xyxy_and_xywh_files_give_the_same_records(tmp_path: Path):
    a = read_ground_truth(write(tmp_path / "a", {"i.txt": "x 3 4 10 20\n"}), box_format="xywh")
    b = read_ground_truth(write(tmp_path / "b", {"i.txt": "x 3 4 13 24\n"}), box_format="xyxy")
    np.testing.assert_array_equal(a.records[0].boxes, b.records[0].boxes)


@pytest.mark.parametrize(
    "gt_text, det_text, match",
    [
        ("dog 1 2 3\n", None, r"i\.txt:1: expected '<class> <4 box numbers> \[difficult\]', got 4 fields"),
        ("dog 1 2 3 x\n", None, r"i\.txt:1: not a number"),
        ("dog 1 2 3 4\ndog 1 2 3 nan\n", None, r"i\.txt:2: non-finite"),
        ("dog 1 2 3 4\n", "cat 0.5 1 1 2 2\n", r"i\.txt:1: unknown class 'cat'"),
        ("dog 1 2 3 4\n", "dog 0.5 1 1 2\n", r"i\.txt:1: expected '<class> <score> <4 box numbers>'"),
    ],
)
def test_malformed_text_files_name_the_file_and_line(tmp_path: Path, gt_text, det_text, match):
    gt_dir = write(tmp_path / "gt", {"i.txt": gt_text})
    with pytest.raises(DatasetError, match=match):
        gt = read_ground_truth(gt_dir)
        read_detections(write(tmp_path / "dets", {"i.txt": det_text}), gt)


def test_detections_for_an_image_without_ground_truth_are_an_error(tmp_path: Path):
    gt = read_ground_truth(write(tmp_path / "gt", {"a.txt": "dog 1 2 3 4\n"}))
    dets = read_detections(write(tmp_path / "dets", {"a.txt": "", "zzz.txt": "dog 0.5 1 1 2 2\n"}), gt)
    with pytest.raises(DatasetError, match="zzz"):
        voc_evaluate(gt.records, dets, gt.class_names)


def reference_voc_boxes(xml: Path) -> tuple[list[str], np.ndarray]:
    names, boxes = [], []
    for obj in ET.parse(xml).getroot().iter("object"):
        bb = obj.find("bndbox")
        xmin, ymin, xmax, ymax = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        names.append(obj.findtext("name").strip())
        boxes.append([xmin - 1, ymin - 1, xmax, ymax])
    return names, np.array(boxes, np.float32).reshape(-1, 4)


def test_voc_root_and_xml_folder(shared_data: Path):
    toy = read_ground_truth(shared_data / "metric_cases" / "toy_cat")
    assert len(toy.records) == 12 and toy.kind == "voc"
    no_xml = [
        r.image_id
        for r in toy.records
        if not (shared_data / "metric_cases/toy_cat/Annotations" / f"{r.image_id}.xml").exists()
    ]
    assert no_xml == ["2010_003115", "2012_003445"]
    ann_dir = shared_data / "voc100" / "Annotations"
    gt = read_ground_truth(ann_dir)
    assert len(gt.records) == len(list(ann_dir.glob("*.xml")))
    all_names = set()
    for r in gt.records:
        names, boxes = reference_voc_boxes(ann_dir / f"{r.image_id}.xml")
        all_names |= set(names)
        np.testing.assert_array_equal(r.boxes, boxes)
        assert [gt.class_names[i] for i in r.labels] == names
    assert gt.class_names == tuple(sorted(all_names))
    assert sum(r.difficult.sum() for r in gt.records) == 38


def test_coco_ground_truth_keeps_the_file_values(shared_data: Path):
    case = shared_data / "metric_cases" / "coco_val2014_sample"
    raw = json.loads((case / "instances_sample.json").read_text())
    gt = read_ground_truth(case / "instances_sample.json")
    assert [r.image_id for r in gt.records] == [str(i["id"]) for i in raw["images"]]
    cats = sorted(raw["categories"], key=lambda c: c["id"])
    assert gt.class_names == tuple(c["name"] for c in cats) and gt.category_ids == tuple(c["id"] for c in cats)
    np.testing.assert_array_equal(gt.coco.bbox, [a["bbox"] for a in raw["annotations"]])
    np.testing.assert_array_equal(gt.coco.area, [a["area"] for a in raw["annotations"]])
    np.testing.assert_array_equal(gt.coco.category, [a["category_id"] for a in raw["annotations"]])
    assert sum(r.num_boxes for r in gt.records) == len(raw["annotations"]) == 830
    first = raw["annotations"][0]
    record = next(r for r in gt.records if r.image_id == str(first["image_id"]))
    x, y, w, h = first["bbox"]
    assert np.array([x, y, x + w, y + h], np.float32).tolist() in record.boxes.tolist()
    dets = read_coco_results_arrays(case / "detections.json", gt)
    raw_dets = json.loads((case / "detections.json").read_text())
    np.testing.assert_array_equal(dets.bbox, [d["bbox"] for d in raw_dets])
    np.testing.assert_array_equal(dets.score, [d["score"] for d in raw_dets])


def test_coco_results_need_a_coco_ground_truth(tmp_path: Path, shared_data: Path):
    gt = read_ground_truth(write(tmp_path / "gt", {"1.txt": "dog 1 2 3 4\n"}))
    results = tmp_path / "r.json"
    results.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}]))
    with pytest.raises(DatasetError, match="only a COCO JSON ground truth"):
        read_detections(results, gt)
    coco = read_ground_truth(shared_data / "metric_cases" / "coco_val2014_sample" / "instances_sample.json")
    results.write_text(json.dumps([{"image_id": 123456789, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}]))
    with pytest.raises(DatasetError, match="123456789"):
        read_detections(results, coco)
    results.write_text(
        json.dumps([{"image_id": int(coco.records[0].image_id), "category_id": 12, "bbox": [1, 2, 3, 4], "score": 0.5}])
    )
    with pytest.raises(DatasetError, match="unknown category id 12"):  # COCO id 12 does not exist
        read_detections(results, coco)
