"""yolov2/data/coco.py on coco_tiny and on broken JSON made here; round trips through COCO JSON.

References: the raw JSON read with plain ``json`` and converted by hand (x, y, x + w, y + h), and
pycocotools itself for the files the writer produces.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from corpus.special import SPECIAL_KINDS, finishes_within, make_special
from yolov2.data.coco import CocoCategories, read_coco, read_coco_categories, write_coco
from yolov2.data.records import ImageRecord, Reject
from yolov2.data.voc import VOC_CLASSES, read_voc
from yolov2.errors import DatasetError


def image_level(rejects: list[Reject]) -> list[Reject]:
    return [r for r in rejects if r.level == "image"]


def assert_accounted(n_in: int, records: list[ImageRecord], rejects: list[Reject]) -> None:
    assert n_in == len(records) + len(image_level(rejects))


def dicts(records: list[ImageRecord]) -> list[dict]:
    return [r.to_dict() for r in records]


def coco_paths(shared_data: Path, split: str) -> tuple[Path, Path]:
    root = shared_data / "coco_tiny"
    return root / "annotations" / f"instances_{split}2017.json", root / f"{split}2017"


# --- real data -------------------------------------------------------------------------------


@pytest.mark.parametrize("split, n_boxes", [("train", 705), ("val", 815)])
def test_coco_tiny_matches_a_plain_json_reading(shared_data: Path, split: str, n_boxes: int) -> None:
    ann_path, image_dir = coco_paths(shared_data, split)
    raw = json.loads(ann_path.read_text())
    records, rejects = read_coco(ann_path, image_dir, split)
    assert rejects == []
    assert len(records) == len(raw["images"]) == 80
    assert len(records) + len(image_level(rejects)) == len(raw["images"])
    label_of = {cid: i for i, cid in enumerate(sorted(c["id"] for c in raw["categories"]))}
    anns_of: dict[int, list[dict]] = {}
    for ann in raw["annotations"]:
        anns_of.setdefault(ann["image_id"], []).append(ann)
    for record, img in zip(records, raw["images"]):
        assert record.image_id == str(img["id"])
        assert (record.width, record.height, record.split) == (img["width"], img["height"], split)
        assert Path(record.path) == (image_dir / img["file_name"]).absolute()
        anns = anns_of.get(img["id"], [])
        expected = np.array(
            [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns],
            np.float32,
        )
        np.testing.assert_array_equal(record.boxes, expected.reshape(-1, 4))
        assert record.labels.tolist() == [label_of[a["category_id"]] for a in anns]
        assert record.iscrowd.tolist() == [bool(a["iscrowd"]) for a in anns]
        assert not record.difficult.any() and record.clipped_boxes == 0
    assert sum(r.num_boxes for r in records) == len(raw["annotations"]) == n_boxes
    assert sum(int(r.iscrowd.sum()) for r in records) == sum(a["iscrowd"] for a in raw["annotations"]) > 0


def test_categories_are_contiguous_in_id_order(shared_data: Path) -> None:
    ann_path, _ = coco_paths(shared_data, "val")
    raw = json.loads(ann_path.read_text())
    cats = read_coco_categories(ann_path)
    ref = sorted((c["id"], c["name"]) for c in raw["categories"])
    assert list(cats.ids) == [i for i, _ in ref] and list(cats.names) == [n for _, n in ref]
    assert len(cats.ids) == 80 and cats.ids[0] == 1 and cats.ids[-1] == 90
    darknet = [n for n in (shared_data / "darknet_cfg" / "coco.names").read_text().split("\n") if n]
    same = [a == b for a, b in zip(cats.names, darknet)]  # Darknet's order, a few names spelt the VOC way
    assert len(darknet) == 80 and sum(same) >= 74
    assert (cats.names[3], darknet[3]) == ("motorcycle", "motorbike")
    assert cats.label_of_id[90] == 79


def test_coco_tiny_read_write_read_is_lossless(shared_data: Path, tmp_path: Path) -> None:
    ann_path, image_dir = coco_paths(shared_data, "val")
    records, _ = read_coco(ann_path, image_dir, "val")
    cats = read_coco_categories(ann_path)
    out = tmp_path / "instances_val.json"
    id_map = write_coco(records, cats.names, out, category_ids=cats.ids, image_dir=image_dir)
    assert id_map == {r.image_id: int(r.image_id) for r in records}  # COCO ids are kept
    again, rejects = read_coco(out, image_dir, "val")
    assert rejects == [] and dicts(again) == dicts(records)
    assert_accounted(80, again, rejects)
    # the written file, as pycocotools and the raw JSON see it
    raw, written = json.loads(ann_path.read_text()), json.loads(out.read_text())
    assert [a["id"] for a in written["annotations"]] == list(range(1, len(raw["annotations"]) + 1))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(out))
    assert sorted(coco.getCatIds()) == sorted(c["id"] for c in raw["categories"])
    raw_by_img: dict[int, list] = {}
    for a in raw["annotations"]:
        raw_by_img.setdefault(a["image_id"], []).append(a)
    for img_id, anns in raw_by_img.items():
        got = coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))
        assert [a["category_id"] for a in got] == [a["category_id"] for a in anns]
        np.testing.assert_allclose([a["bbox"] for a in got], [a["bbox"] for a in anns], atol=1e-4)
        assert [a["iscrowd"] for a in got] == [a["iscrowd"] for a in anns]
        for a in got:
            assert a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3])
    assert {i["file_name"] for i in written["images"]} == {i["file_name"] for i in raw["images"]}


@pytest.mark.parametrize("dataset, split, names", [("voc100", "test", VOC_CLASSES), ("raccoon", "train", ("raccoon",))])
def test_voc_to_coco_json_to_records_is_lossless(shared_data: Path, tmp_path: Path, dataset, split, names) -> None:
    records, _ = read_voc(shared_data / dataset, split, class_names=names)
    out = tmp_path / "instances.json"
    id_map = write_coco(records, names, out)  # image_dir: the folder shared by the records
    assert sorted(id_map.values()) == list(range(1, len(records) + 1))  # VOC ids are not integers
    again, rejects = read_coco(out, shared_data / dataset / "JPEGImages", split)
    assert rejects == []
    assert_accounted(len(records), again, rejects)
    assert dicts(again) == dicts(records)  # ids, paths, boxes, difficult flags: all kept
    if dataset == "voc100":
        assert sum(int(r.difficult.sum()) for r in again) == 38


def test_class_names_map_by_name_and_others_become_box_rejects(shared_data: Path) -> None:
    ann_path, image_dir = coco_paths(shared_data, "val")
    records, _ = read_coco(ann_path, image_dir, "val")
    cats = read_coco_categories(ann_path)
    same, rejects = read_coco(ann_path, image_dir, "val", check_images=False, class_names=list(cats.names))
    assert rejects == [] and dicts(same) == dicts(records)
    only = ["dog", "person"]
    subset, rejects = read_coco(ann_path, image_dir, "val", check_images=False, class_names=only)
    raw = json.loads(ann_path.read_text())
    name_of = {c["id"]: c["name"] for c in raw["categories"]}
    kept = [a for a in raw["annotations"] if name_of[a["category_id"]] in only]
    assert len(subset) == 80 and sum(r.num_boxes for r in subset) == len(kept)
    assert_accounted(80, subset, rejects)
    assert len(rejects) == len(raw["annotations"]) - len(kept)
    assert all(r.level == "box" and "is not among the class names" in r.reason for r in rejects)
    assert sorted(r.unknown_class for r in rejects) == sorted(
        name_of[a["category_id"]] for a in raw["annotations"] if name_of[a["category_id"]] not in only
    )
    assert {int(lab) for r in subset for lab in r.labels} == {0, 1}


# --- broken JSON made here -------------------------------------------------------------------


def jpeg_file(path: Path, width: int = 64, height: int = 48) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (120, 30, 60)).save(path, "JPEG")


def small_coco(tmp_path: Path, n_images: int = 3) -> tuple[dict, Path]:
    image_dir = tmp_path / "images"
    images, anns = [], []
    for i in range(1, n_images + 1):
        jpeg_file(image_dir / f"{i:04d}.jpg")
        images.append({"id": i, "file_name": f"{i:04d}.jpg", "width": 64, "height": 48})
        anns.append(
            {"id": 10 + i, "image_id": i, "category_id": 3, "bbox": [1.5, 2.0, 10.0, 20.0], "iscrowd": 0, "area": 200.0}
        )
    cats = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    return {"images": images, "annotations": anns, "categories": cats}, image_dir


def read_dict(data: dict, tmp_path: Path, image_dir: Path, **kwargs) -> tuple[list[ImageRecord], list[Reject]]:
    path = tmp_path / "instances_bad.json"
    path.write_text(json.dumps(data))
    return read_coco(path, image_dir, "val", **kwargs)


def test_images_without_annotations_are_kept(tmp_path: Path) -> None:
    data, image_dir = small_coco(tmp_path)
    data["annotations"] = data["annotations"][:1]
    records, rejects = read_dict(data, tmp_path, image_dir)
    assert rejects == [] and [r.num_boxes for r in records] == [1, 0, 0]
    assert_accounted(3, records, rejects)
    np.testing.assert_array_equal(records[0].boxes, [[1.5, 2.0, 11.5, 22.0]])


def test_duplicate_image_id_rejects_every_entry_of_it(tmp_path: Path) -> None:
    data, image_dir = small_coco(tmp_path)
    data["images"].append({"id": 2, "file_name": "0003.jpg", "width": 64, "height": 48})
    records, rejects = read_dict(data, tmp_path, image_dir)
    assert [r.image_id for r in records] == ["1", "3"]
    assert [(r.level, r.image_id) for r in rejects] == [("image", "2"), ("image", "2")]
    assert all(
        "duplicate image id 2" in r.reason and "images[1]" in r.reason and "images[3]" in r.reason for r in rejects
    )
    assert rejects[0].source.endswith("instances_bad.json: images[1]")
    assert len(records) + len(image_level(rejects)) == len(data["images"])
    with pytest.raises(DatasetError, match=r"instances_bad.json: images\[1\]: duplicate image id 2"):
        read_dict(data, tmp_path, image_dir, strict=True)


def test_annotation_for_a_missing_image_is_a_box_reject(tmp_path: Path) -> None:
    data, image_dir = small_coco(tmp_path)
    data["annotations"].append({"id": 99, "image_id": 42, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 0})
    records, rejects = read_dict(data, tmp_path, image_dir)
    assert len(records) == 3 and sum(r.num_boxes for r in records) == 3
    assert_accounted(3, records, rejects)
    (reject,) = rejects
    assert reject.level == "box" and reject.image_id == "42"
    assert "for a missing image: image_id 42" in reject.reason
    assert reject.source.endswith("instances_bad.json: annotations[3]")
    with pytest.raises(DatasetError, match="image_id 42"):
        read_dict(data, tmp_path, image_dir, strict=True)


ENTRY_CASES = [
    # the string id rejects the image; its annotation (image_id 2, an integer) then has no image
    ("string_image_id", lambda d: d["images"][1].update(id="2"), "image", "is a string; COCO image ids are integers"),
    ("bad_width", lambda d: d["images"][1].update(width=0), "image", "width 0 is not a positive integer"),
    ("unsafe_file_name", lambda d: d["images"][1].update(file_name="../../x.jpg"), "image", "not a relative path"),
    ("missing_file", lambda d: d["images"][1].update(file_name="nope.jpg"), "image", "image file is missing"),
    ("size_disagrees", lambda d: d["images"][1].update(width=48, height=64), "image", "gives the size 48x64"),
    ("duplicate_ann_id", lambda d: d["annotations"][2].update(id=11), "box", "duplicate annotation id 11"),
    (
        "string_ann_image_id",
        lambda d: d["annotations"][1].update(image_id="2"),
        "box",
        "image_id '2' is not an integer",
    ),
    ("unknown_category", lambda d: d["annotations"][1].update(category_id=5), "box", "unknown category id 5"),
    ("bad_bbox", lambda d: d["annotations"][1].update(bbox=[1, 2, 3]), "box", "is not a list of 4 numbers"),
    ("zero_area", lambda d: d["annotations"][1].update(bbox=[5, 5, 0, 10]), "box", "zero-area box"),
    ("bad_iscrowd", lambda d: d["annotations"][1].update(iscrowd=2), "box", "iscrowd is 2, expected 0 or 1"),
]


@pytest.mark.parametrize("case", ENTRY_CASES, ids=[c[0] for c in ENTRY_CASES])
def test_bad_entries_are_named_rejects_or_errors_when_strict(tmp_path: Path, case) -> None:
    _, edit, level, words = case
    data, image_dir = small_coco(tmp_path)
    edit(data)
    records, rejects = read_dict(data, tmp_path, image_dir)
    if case[0] == "string_image_id":
        assert rejects[1].level == "box" and "for a missing image" in rejects[1].reason
        rejects = rejects[:1]
    assert len(rejects) == 1, rejects
    (reject,) = rejects
    assert reject.level == level and words in reject.reason and "instances_bad.json" in reject.source, reject
    assert len(records) + len(image_level(rejects)) == 3
    if level == "box":
        assert len(records) == 3 and sum(r.num_boxes for r in records) == 2
    with pytest.raises(DatasetError, match="instances_bad.json"):
        read_dict(data, tmp_path, image_dir, strict=True)


def test_box_outside_image_is_clipped_and_counted(tmp_path: Path) -> None:
    data, image_dir = small_coco(tmp_path)
    data["annotations"][0]["bbox"] = [-4.0, 40.0, 30.0, 20.0]  # to x 26, y 60 > 48
    records, rejects = read_dict(data, tmp_path, image_dir, strict=True)
    assert rejects == [] and records[0].clipped_boxes == 1
    assert_accounted(3, records, rejects)
    np.testing.assert_array_equal(records[0].boxes, [[0, 40, 26, 48]])


def test_truncated_and_png_named_jpg_images_are_rejected(tmp_path: Path) -> None:
    data, image_dir = small_coco(tmp_path)
    full = (image_dir / "0001.jpg").read_bytes()
    (image_dir / "0001.jpg").write_bytes(full[:-2])
    Image.new("RGB", (64, 48)).save(image_dir / "0002.jpg", "PNG")
    records, rejects = read_dict(data, tmp_path, image_dir)
    assert [r.image_id for r in records] == ["3"]
    assert "truncated JPEG" in rejects[0].reason and rejects[0].source.endswith("0001.jpg")
    assert "content is PNG but the file 0002.jpg is named .jpg" in rejects[1].reason
    assert_accounted(3, records, rejects)
    records, rejects = read_dict(data, tmp_path, image_dir, check_images=False)
    assert len(records) == 3 and rejects == []
    assert_accounted(3, records, rejects)


def test_non_ascii_file_names(tmp_path: Path) -> None:
    data, image_dir = small_coco(tmp_path, 1)
    jpeg_file(image_dir / "été_01.jpg")
    data["images"][0]["file_name"] = "été_01.jpg"
    records, rejects = read_dict(data, tmp_path, image_dir, strict=True)
    assert Path(records[0].path).name == "été_01.jpg"
    assert_accounted(1, records, rejects)
    write_coco(records, ["cat", "dog"], tmp_path / "out.json", category_ids=[3, 7])
    again, _ = read_coco(tmp_path / "out.json", image_dir, "val")
    assert dicts(again) == dicts(records)


@pytest.mark.parametrize(
    "text, words",
    [
        ("{not json", "malformed JSON at line 1"),
        ("[1, 2]", "top level must be an object"),
        ('{"images": [], "categories": []}', "missing key 'annotations'"),
        ('{"images": {}, "annotations": [], "categories": []}', "'images' must be a list"),
        ('{"images": [], "annotations": [], "categories": [{"id": "1", "name": "a"}]}', "id '1' is not an integer"),
        (
            '{"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}',
            "category id 1 already used",
        ),
    ],
)
def test_broken_files_are_errors_naming_the_file(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(DatasetError) as err:
        read_coco(path, tmp_path, "val")
    assert str(err.value).startswith(str(path)) and words in str(err.value)


def test_writer_refuses_images_outside_image_dir_and_bad_labels(tmp_path: Path) -> None:
    record = ImageRecord(
        "a",
        "val",
        str(tmp_path / "x" / "a.jpg"),
        10,
        10,
        boxes=[[0, 0, 5, 5]],
        labels=[2],
        difficult=[False],
        iscrowd=[False],
    )
    with pytest.raises(DatasetError, match="not under image_dir"):
        write_coco([record], ["a", "b", "c"], tmp_path / "o.json", image_dir=tmp_path / "y")
    with pytest.raises(DatasetError, match="label 2 is outside 0..1"):
        write_coco([record], ["a", "b"], tmp_path / "o.json")
    with pytest.raises(DatasetError, match="duplicate category ids"):
        CocoCategories((1, 1), ("a", "b"))


def test_file_name_with_a_lone_surrogate_is_a_named_reject(tmp_path: Path) -> None:
    """JSON's "\\udcff" is how a file-name byte that is not UTF-8 arrives; it must not reach records."""
    import os

    from yolov2.data.records import rejects_to_table

    data, image_dir = small_coco(tmp_path, 2)
    os.rename(image_dir / "0002.jpg", os.fsencode(image_dir) + b"/bad_\xff.jpg")
    data["images"][1]["file_name"] = "bad_\udcff.jpg"  # json.dumps writes the \udcff escape
    records, rejects = read_dict(data, tmp_path, image_dir)
    assert [r.image_id for r in records] == ["1"]
    image_rejects = image_level(rejects)
    assert len(image_rejects) == 1 and "file_name 'bad_\\xff.jpg' is not valid UTF-8" in image_rejects[0].reason
    assert rejects_to_table(rejects).num_rows == len(rejects)
    assert_accounted(2, records, rejects)
    data["images"][1]["id"] = "\udcff"  # a string id holding one: its reject must still be writable
    records, rejects = read_dict(data, tmp_path, image_dir)
    assert image_level(rejects)[0].image_id == "\\xff" and rejects_to_table(rejects).num_rows == len(rejects)


def test_confine_to_rejects_json_or_image_linked_from_outside(tmp_path: Path) -> None:
    import os

    root = tmp_path / "ds"
    data, image_dir = small_coco(root, 2)
    outside = tmp_path / "outside.jpg"
    jpeg_file(outside)
    (image_dir / "0002.jpg").unlink()
    os.symlink(outside, image_dir / "0002.jpg")
    path = root / "instances_val.json"
    path.write_text(json.dumps(data))
    records, rejects = read_coco(path, image_dir, "val", confine_to=root)
    assert [r.image_id for r in records] == ["1"]
    (reject,) = image_level(rejects)
    assert (
        reject.image_id == "2" and "points outside the dataset root" in reject.reason and str(outside) in reject.reason
    )
    assert_accounted(2, records, rejects)
    linked = root / "instances_linked.json"
    (tmp_path / "elsewhere.json").write_text(json.dumps(data))
    os.symlink(tmp_path / "elsewhere.json", linked)
    with pytest.raises(DatasetError, match="instances_linked.json: .*points outside the dataset root"):
        read_coco(linked, image_dir, "val", confine_to=root)
    records, rejects = read_coco(path, image_dir, "val")  # not confined: links are followed
    assert len(records) == 2 and rejects == []


def test_missing_width_height_comes_from_the_image_header_even_without_check_images(tmp_path: Path) -> None:
    data, image_dir = small_coco(tmp_path, 2)
    del data["images"][0]["width"], data["images"][0]["height"]
    jpeg_file(image_dir / "0001.jpg", 70, 50)  # the header is the only source of this size
    for check_images in (True, False):
        records, rejects = read_dict(data, tmp_path, image_dir, check_images=check_images)
        assert rejects == [] and [(r.width, r.height, r.size_from_image) for r in records] == [
            (70, 50, True),
            (64, 48, False),
        ]


@pytest.mark.parametrize("kind", sorted(SPECIAL_KINDS))
def test_image_or_json_that_is_not_a_regular_file_is_refused_by_type(tmp_path: Path, kind: str) -> None:
    data, image_dir = small_coco(tmp_path, 2)
    image = make_special(image_dir / "0002.jpg", kind)
    for check_images in (True, False):
        records, rejects = finishes_within(
            10, functools.partial(read_dict, data, tmp_path, image_dir, check_images=check_images)
        )
        assert [r.image_id for r in records] == ["1"]
        (reject,) = image_level(rejects)
        assert reject.image_id == "2" and f"{image} is not a regular file but {SPECIAL_KINDS[kind]}" in reject.reason
    path = make_special(tmp_path / "instances_special.json", kind)
    match = f"instances_special.json: .*not a regular file but {re.escape(SPECIAL_KINDS[kind])}"
    with pytest.raises(DatasetError, match=match):
        finishes_within(10, lambda: read_coco(path, image_dir, "val"))
