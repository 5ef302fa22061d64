"""yolov2/data/class_names.py: ``class_names: auto`` per format, and the checks that a list fits the boxes.

Expected names are written by hand from the files made here (or, for the shared datasets, from their
README and Darknet's voc.names); the messages are checked for what a user needs: the names, the
counts, the share and the key to set.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from yolov2.data.class_names import (
    UNKNOWN_SHARE_LIMIT,
    ClassNames,
    check_split_has_boxes,
    check_unknown_classes,
    check_unknown_classes_early,
    resolve_class_names,
    unknown_class_counts,
    voc_name_counts,
    yolo_class_names,
)
from yolov2.data.records import Reject
from yolov2.data.voc import VOC_CLASSES
from yolov2.errors import DatasetError

TRAIN_TEST = {"train": ["train"], "test": ["test"]}


def obj(name: str) -> str:
    box = "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox>"
    return f"<object><name>{name}</name>{box}</object>"


def make_voc(root: Path, annotations: dict[str, str], splits: dict[str, list[str]]) -> Path:
    """A VOC folder of annotation XMLs (no images: names are all the scan reads) and split files."""
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for image_id, body in annotations.items():
        (root / "Annotations" / f"{image_id}.xml").write_text(body)
    for split, ids in splits.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def voc_doc(*names: str) -> str:
    return f"<annotation><filename>x.jpg</filename>{''.join(obj(n) for n in names)}</annotation>"


def prepared(fmt: str, root: Path, **extra) -> dict:
    return {"format": fmt, "root": str(root), **extra}


# --- VOC ---------------------------------------------------------------------------------------------


def test_voc_auto_takes_the_train_annotations_names_sorted(tmp_path: Path) -> None:
    root = make_voc(
        tmp_path / "voc",
        {
            "a": voc_doc("zebra", " ant ", "zebra"),
            "b": voc_doc("moth"),
            "c": "<annotation><object><name>broken</name>",  # malformed: skipped, the reader rejects it later
            "d": voc_doc("cow"),  # only in test: not a train name
            "e": "<notvoc>" + obj("weird") + "</notvoc>",  # not an <annotation>: skipped too
            "f": "<annotation><object><name></name></object></annotation>",  # an empty name is no class
        },
        {"train": ["a", "b", "c", "e", "f", "missing"], "test": ["d"]},
    )
    names = resolve_class_names(prepared("voc", root), "auto", TRAIN_TEST)
    assert names == ClassNames(("ant", "moth", "zebra"), "annotations", "3 train annotations")
    assert names.describe() == "class names (auto, from 3 train annotations): ant, moth, zebra"
    counts, files = voc_name_counts(root, ["train", "test"])
    assert dict(counts) == {"zebra": 2, "ant": 1, "moth": 1, "cow": 1} and files == 4


def test_voc_auto_without_a_train_split_reads_every_split(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc", {"a": voc_doc("dog"), "b": voc_doc("cat")}, {"val": ["a"], "test": ["b"]})
    names = resolve_class_names(prepared("voc", root), "auto", {"val": ["val"], "test": ["test"]})
    assert names.names == ("cat", "dog") and names.origin == "2 val+test annotations"


def test_voc_auto_with_no_object_is_an_error_naming_the_folder(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc", {"a": voc_doc()}, {"train": ["a"]})
    with pytest.raises(DatasetError, match=rf"{root}: the 1 readable annotation file\(s\) of split train .*set "):
        resolve_class_names(prepared("voc", root), "auto", {"train": ["train"]})


def test_standard_voc_downloads_give_the_20_voc_classes(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc", {"a": voc_doc("dog")}, {"train": ["a"]})
    names = resolve_class_names(prepared("voc", root, archives=["voc2007_trainval"]), "auto", TRAIN_TEST)
    assert names.names == VOC_CLASSES and names.source == "voc"


def test_generated_data_and_a_configured_list(tmp_path: Path) -> None:
    gen = resolve_class_names(prepared("voc", tmp_path, class_names=["circle", "square"]), "auto", TRAIN_TEST)
    assert gen.names == ("circle", "square") and gen.source == "generator"
    given = resolve_class_names(prepared("voc", tmp_path, class_names=["circle"]), ["b", "a"], TRAIN_TEST)
    assert given == ClassNames(("b", "a"), "config", "data.class_names")  # the user's order, untouched
    assert given.describe() == "class names (from data.class_names): b, a"


def test_raccoon_auto_is_its_one_class(shared_data: Path) -> None:
    names = resolve_class_names(prepared("voc", shared_data / "raccoon"), "auto", TRAIN_TEST)
    assert names == ClassNames(("raccoon",), "annotations", "160 train annotations")


def test_a_voc_subset_with_every_class_keeps_voc_order(shared_data: Path) -> None:
    """voc100 holds all 20 classes; sorted names are Darknet's voc.names order (it is alphabetical)."""
    names = resolve_class_names(prepared("voc", shared_data / "voc100"), "auto", {"test": ["test"]})
    assert list(names.names) == (shared_data / "darknet_cfg" / "voc.names").read_text().split()


# --- COCO and YOLO -----------------------------------------------------------------------------------


def test_coco_auto_is_the_categories_in_id_order(tmp_path: Path) -> None:
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    doc = {"images": [], "annotations": [], "categories": [{"id": 7, "name": "z"}, {"id": 2, "name": "y"}]}
    (root / "annotations" / "instances_train.json").write_text(json.dumps(doc))
    names = resolve_class_names(prepared("coco", root), "auto", TRAIN_TEST)
    assert names == ClassNames(("y", "z"), "categories", "the categories of instances_train.json")


def test_coco_tiny_auto_has_its_80_categories(shared_data: Path) -> None:
    names = resolve_class_names(
        prepared("coco", shared_data / "coco_tiny"), "auto", {"train": ["train2017"], "test": ["val2017"]}
    )
    assert len(names.names) == 80 and names.names[0] == "person" and names.names[-1] == "toothbrush"


def yolo_folder(tmp_path: Path) -> Path:
    root = tmp_path / "yolo"
    (root / "images" / "train").mkdir(parents=True)
    return root


def test_yolo_names_come_from_classes_txt_then_the_only_names_file_then_data_yaml(tmp_path: Path) -> None:
    root = yolo_folder(tmp_path)
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nnames:\n  1: dog\n  0: cat\n  2: 7\n")
    assert yolo_class_names(root) == (["cat", "dog", "7"], root / "data.yaml")  # a dict in id order
    (root / "a.names").write_text("x\n")
    (root / "b.names").write_text("y\n")
    assert yolo_class_names(root)[0] == ["cat", "dog", "7"]  # two .names files say nothing
    (root / "b.names").unlink()
    assert yolo_class_names(root) == (["x"], root / "a.names")
    (root / "classes.txt").write_text("first\nsecond\n")
    names = resolve_class_names(prepared("yolo", root), "auto", TRAIN_TEST)
    assert names == ClassNames(("first", "second"), "names file", "classes.txt")


def test_yolo_dataset_yaml_list_form(tmp_path: Path) -> None:
    root = yolo_folder(tmp_path)
    (root / "dataset.yaml").write_text("nc: 2\nnames: [cat, dog]\n")
    assert yolo_class_names(root) == (["cat", "dog"], root / "dataset.yaml")


@pytest.mark.parametrize(
    "text, words",
    [
        ("names: {0: a, 2: b}\n", "the keys must be the class ids 0..1"),
        ("nc: 2\n", "no names:"),
        ("names: [a, a]\n", "repeats a"),
        ("names: [a, null]\n", "None is not a class name"),
        ("names: [a\n", "cannot read the dataset YAML"),
    ],
)
def test_yolo_bad_data_yaml_is_named(tmp_path: Path, text: str, words: str) -> None:
    root = yolo_folder(tmp_path)
    (root / "data.yaml").write_text(text)
    with pytest.raises(DatasetError, match=rf"data.yaml: .*{words}"):
        yolo_class_names(root)


def test_yolo_without_any_names_says_what_to_add(tmp_path: Path) -> None:
    root = yolo_folder(tmp_path)
    with pytest.raises(DatasetError, match=rf"{root}: no class names .*add classes.txt .*set data.class_names"):
        resolve_class_names(prepared("yolo", root), "auto", TRAIN_TEST)


# --- the checks --------------------------------------------------------------------------------------

MINE = ClassNames(("dog",), "config", "data.class_names")


def test_unknown_classes_stop_names_them_by_count_with_the_share_and_the_keys() -> None:
    counts = {"dog": 10, "raccoon": 30, "cat": 5, "ant": 5}
    with pytest.raises(DatasetError) as e:
        check_unknown_classes(MINE, counts, 50, skip_unknown=False)
    text = str(e.value)
    assert "40 of the 50 boxes (80%) have a class that is not in data.class_names (dog)" in text
    assert "'raccoon' (30), 'ant' (5), 'cat' (5)." in text  # most frequent first, ties by name
    for key in ("data.class_names: auto", "add these names to data.class_names", "data.skip_unknown_classes: true"):
        assert key in text


def test_unknown_classes_stop_lists_ten_and_counts_the_rest() -> None:
    counts = {f"c{i:02d}": 100 - i for i in range(14)}
    with pytest.raises(DatasetError, match=r"'c00' \(100\), .*'c09' \(91\) and 4 more\. "):
        check_unknown_classes(MINE, counts, sum(counts.values()), skip_unknown=False)


def test_unknown_classes_below_the_limit_skipped_or_auto_go_on() -> None:
    half = {"dog": 5, "cat": 5}
    assert UNKNOWN_SHARE_LIMIT == 0.5
    check_unknown_classes(MINE, half, 10, skip_unknown=False)  # exactly half: not "more than half"
    check_unknown_classes(MINE, {"cat": 9, "dog": 1}, 10, skip_unknown=True)
    check_unknown_classes(ClassNames(("dog",), "annotations", "x"), {"cat": 9, "dog": 1}, 10, skip_unknown=False)
    check_unknown_classes(MINE, {}, 0, skip_unknown=False)


def test_unknown_counts_come_from_the_structured_field_of_box_rejects() -> None:
    rejects = [
        Reject("a.txt", "line 1: unknown class id 3 (...)", "box", "a", "train", unknown_class="3"),
        Reject("a.txt", "line 2: unknown class id 3 (...)", "box", "a", "train", unknown_class="3"),
        Reject("b.xml", "object 0 (cat): unknown class name 'cat' ...", "box", "b", "train"),  # no field: not counted
        Reject("c.jpg", "truncated", "image", "c", "train"),
    ]
    assert unknown_class_counts(rejects) == {"3": 2}


def test_the_early_voc_check_scans_every_split(tmp_path: Path) -> None:
    root = make_voc(
        tmp_path / "voc", {"a": voc_doc("dog"), "b": voc_doc("raccoon", "raccoon")}, {"train": ["a"], "test": ["b"]}
    )
    with pytest.raises(DatasetError, match=r"2 of the 3 boxes \(67%\) .*'raccoon' \(2\)"):
        check_unknown_classes_early(prepared("voc", root), TRAIN_TEST, MINE, skip_unknown=False)
    check_unknown_classes_early(prepared("voc", root), TRAIN_TEST, MINE, skip_unknown=True)
    check_unknown_classes_early(prepared("yolo", root), TRAIN_TEST, MINE, skip_unknown=False)  # YOLO: after reading


def test_a_split_without_any_box_names_the_split_counts_reasons_and_fix() -> None:
    rejects = [Reject(f"{i}.xml", "r", "box", str(i), "test", unknown_class="raccoon") for i in range(3)]
    rejects.append(Reject("9.xml", "object 1 (dog): zero-area box", "box", "9", "test"))
    with pytest.raises(DatasetError) as e:
        check_split_has_boxes("test", 40, 0, rejects, MINE)
    text = str(e.value)
    assert text.startswith("split test: none of its 40 images has a box left; 4 boxes were rejected")
    assert "most often: unknown class 'raccoon' (3); object 1 (dog): zero-area box (1)" in text
    assert "class names (from data.class_names): dog" in text and "data.class_names: auto" in text
    with pytest.raises(DatasetError, match="split val: none of its 2 images has a box, and no box was rejected"):
        check_split_has_boxes("val", 2, 0, [], MINE)
    check_split_has_boxes("test", 40, 1, rejects, MINE)
    check_split_has_boxes("empty", 0, 0, [], MINE)
