"""yolov2/data/sources.py: what the shard stage lists, on small folders made here.

Checks the listing's own rules (orphan YOLO labels counted, dangling links and special files listed
and rejected by type, every reader confined to the dataset root, an id listed twice rejected and fatal
in strict mode, each item naming its annotation); the readers' parsing has its own tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from yolov2.data.sources import CLASS_ONLY_SPLIT, list_class_only, list_split_items, list_splits
from yolov2.data.val_split import carve_val
from yolov2.errors import ConfigError, DatasetError


def jpeg(path: Path, size: tuple[int, int] = (80, 60)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (40, 80, 120)).save(path, "JPEG")


def yolo_root(tmp_path: Path) -> Path:
    root = tmp_path / "yolo"
    (root / "labels" / "train").mkdir(parents=True)
    (root / "classes.txt").write_text("a\n")
    for stem in ("x", "y"):
        jpeg(root / "images" / "train" / f"{stem}.jpg")
        (root / "labels" / "train" / f"{stem}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    return root


def loaded(listing):
    out = {}
    for item in listing.items:
        record, rejects = item.load()
        out[Path(item.image_path).stem] = (record, rejects)
    return out


def test_yolo_orphan_label_is_an_image_level_input_reject(tmp_path: Path) -> None:
    root = yolo_root(tmp_path)
    (root / "labels" / "train" / "ghost.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    listing = list_split_items({"format": "yolo", "root": str(root)}, "train", ["train"], None)
    assert [Path(i.image_path).name for i in listing.items] == ["x.jpg", "y.jpg"]
    (reject,) = listing.rejects
    assert reject.level == "image" and reject.image_id == "ghost" and reject.source.endswith("labels/train/ghost.txt")
    assert "label file without an image" in reject.reason
    # images in = listed images + orphan labels, as read_yolo_txt counts them
    assert len(listing.items) + sum(r.level == "image" for r in listing.rejects) == 3
    with pytest.raises(DatasetError, match="ghost.txt: label file without an image"):
        list_split_items({"format": "yolo", "root": str(root)}, "train", ["train"], None, strict=True)


def test_yolo_links_are_listed_and_confined_to_the_root(tmp_path: Path) -> None:
    root = yolo_root(tmp_path)
    jpeg(tmp_path / "outside.jpg")
    os.symlink(tmp_path / "outside.jpg", root / "images" / "train" / "out.jpg")
    os.symlink(root / "images" / "train" / "gone.jpg", root / "images" / "train" / "dangling.jpg")
    listing = list_split_items({"format": "yolo", "root": str(root)}, "train", ["train"], None)
    results = loaded(listing)
    assert sorted(results) == ["dangling", "out", "x", "y"]  # a dangling link is listed, not silently skipped
    assert results["out"][0] is None and "points outside the dataset root" in results["out"][1][0].reason
    assert results["dangling"][0] is None and "missing" in results["dangling"][1][0].reason
    assert results["x"][0] is not None and results["x"][1] == []


def test_voc_and_coco_readers_are_confined_to_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside.jpg"
    jpeg(outside)
    voc = tmp_path / "voc"
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / d).mkdir(parents=True)
    os.symlink(outside, voc / "JPEGImages" / "a.jpg")
    (voc / "Annotations" / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><size><width>80</width><height>60</height></size></annotation>"
    )
    (voc / "ImageSets" / "Main" / "train.txt").write_text("a\n")
    listing = list_split_items({"format": "voc", "root": str(voc)}, "train", ["train"], ["dog"])
    record, rejects = listing.items[0].load()
    assert record is None and "points outside the dataset root" in rejects[0].reason

    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 80, "height": 60}],
        "annotations": [],
        "categories": [{"id": 1, "name": "dog"}],
    }
    (coco / "train").mkdir()
    os.symlink(outside, coco / "train" / "a.jpg")
    (coco / "annotations" / "instances_train.json").write_text(json.dumps(doc))
    listing = list_split_items({"format": "coco", "root": str(coco)}, "train", ["train"], None)
    assert listing.items == [] and "points outside the dataset root" in listing.rejects[0].reason
    (tmp_path / "elsewhere.json").write_text(json.dumps(doc))
    os.symlink(tmp_path / "elsewhere.json", coco / "annotations" / "instances_val.json")
    with pytest.raises(DatasetError, match="instances_val.json: .*points outside the dataset root"):
        list_split_items({"format": "coco", "root": str(coco)}, "val", ["val"], None)


def voc_root(tmp_path: Path, ids: list[str], split_text: str) -> Path:
    voc = tmp_path / "voc"
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / d).mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        jpeg(voc / "JPEGImages" / f"{image_id}.jpg")
        (voc / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename><size><width>80</width><height>60</height></size>"
            "</annotation>"
        )
    (voc / "ImageSets" / "Main" / "train.txt").write_text(split_text)
    return voc


def test_an_id_listed_twice_is_a_reject_and_stops_strict_mode(tmp_path: Path) -> None:
    """Within one split file or across two specs of a split: every other reject stops strict mode, so this must."""
    voc = voc_root(tmp_path, ["a 1", "b"], "a 1\nb\n a 1\t\n")
    prepared = {"format": "voc", "root": str(voc)}
    listing = list_split_items(prepared, "train", ["train"], ["dog"])
    assert [Path(i.image_path).name for i in listing.items] == ["a 1.jpg", "b.jpg"]
    (reject,) = listing.rejects
    assert reject.level == "image" and reject.image_id == "a 1" and reject.source.endswith("Main/train.txt")
    assert "'a 1' appears twice in split train" in reject.reason
    with pytest.raises(DatasetError, match="train.txt: image id 'a 1' appears twice in split train"):
        list_split_items(prepared, "train", ["train"], ["dog"], strict=True)
    (voc / "ImageSets" / "Main" / "train.txt").write_text("a 1\n")
    (voc / "ImageSets" / "Main" / "val.txt").write_text("b\na 1\n")
    with pytest.raises(DatasetError, match="val.txt: image id 'a 1' appears twice in split train"):
        list_split_items(prepared, "train", ["train", "val"], ["dog"], strict=True)


def test_voc_items_name_their_annotation_and_per_class_lines_are_listing_rejects(tmp_path: Path) -> None:
    voc = voc_root(tmp_path, ["a 1", "b"], "")
    (voc / "ImageSets" / "Main" / "dog_train.txt").write_text("a 1  1\nb  -1\nc 5\n")
    listing = list_split_items({"format": "voc", "root": str(voc)}, "train", ["dog_train"], ["dog"])
    assert [i.annotation for i in listing.items] == [str(voc / "Annotations" / f"{i}.xml") for i in ("a 1", "b")]
    (reject,) = listing.rejects
    assert reject.source == f"{voc / 'ImageSets' / 'Main' / 'dog_train.txt'}:3" and reject.split == "train"
    assert "line 3 'c 5' is not '<image id> <flag>'" in reject.reason


def test_yolo_entries_that_are_not_regular_files_are_listed_and_rejected_by_type(tmp_path: Path) -> None:
    from corpus.special import finishes_within, make_special

    root = yolo_root(tmp_path)
    make_special(root / "images" / "train" / "pipe.jpg", "fifo")
    make_special(root / "images" / "train" / "folder.jpg", "directory")
    make_special(root / "labels" / "train" / "y.txt", "fifo")
    listing = list_split_items({"format": "yolo", "root": str(root)}, "train", ["train"], None)
    results = finishes_within(10, lambda: loaded(listing))
    assert sorted(results) == ["folder", "pipe", "x", "y"]  # none skipped silently
    assert results["x"][0] is not None
    for stem, kind in (("folder", "a directory"), ("pipe", "a named pipe (FIFO)"), ("y", "a named pipe (FIFO)")):
        record, (reject,) = results[stem]
        assert record is None and f"not a regular file but {kind}" in reject.reason, stem


def test_keep_lists_only_the_accepted_ids_and_their_rejects(tmp_path: Path) -> None:
    voc = voc_root(tmp_path, ["a", "b", "c"], "a\nb\nc\nb\n")
    (voc / "ImageSets" / "Main" / "dog_train.txt").write_text("a 1\nbroken line\n")
    prepared = {"format": "voc", "root": str(voc)}
    listing = list_split_items(prepared, "val", ["train"], ["dog"], keep=lambda i: i in {"b", "c"})
    assert listing.image_ids == ["b", "c"] and [i.key for i in listing.items] == ["00000000", "00000001"]
    assert [(r.image_id, r.split) for r in listing.rejects] == [("b", "val")]  # b's duplicate line
    record, _ = listing.items[0].load()
    assert record.split == "val"
    rest = list_split_items(prepared, "train", ["train", "dog_train"], ["dog"], keep=lambda i: i not in {"b", "c"})
    assert rest.image_ids == ["a"]
    assert [r.image_id for r in rest.rejects] == [None, "a"]  # the bad line names no image; a listed again


def test_list_splits_carves_val_out_of_train_by_id(tmp_path: Path) -> None:
    ids = [f"im{i}" for i in range(10)]
    voc = voc_root(tmp_path, ids, "".join(f"{i}\n" for i in ids[:8]))
    (voc / "ImageSets" / "Main" / "test.txt").write_text("im8\nim9\n")
    prepared = {"format": "voc", "root": str(voc)}
    splits = {"train": ["train"], "test": ["test"]}
    listings = list_splits(prepared, splits, ["dog"], val_fraction=0.25, val_seed=3)
    assert list(listings) == ["train", "val", "test"]
    expected = set(carve_val(ids[:8], 0.25, 3).val)
    assert set(listings["val"].image_ids) == expected and len(expected) == 2
    assert listings["train"].image_ids == [i for i in ids[:8] if i not in expected]
    assert listings["test"].image_ids == ["im8", "im9"]
    assert {item.load()[0].split for item in listings["val"].items} == {"val"}
    assert list_splits(prepared, splits, ["dog"])["train"].image_ids == ids[:8]  # no fraction: no carve
    with pytest.raises(ConfigError, match="only when data.splits has a train split and no val split"):
        list_splits(prepared, {**splits, "val": ["test"]}, ["dog"], val_fraction=0.25)


def test_yolo_names_from_data_yaml_when_none_are_given(tmp_path: Path) -> None:
    root = yolo_root(tmp_path)
    (root / "classes.txt").unlink()
    (root / "data.yaml").write_text("names: {0: a}\n")
    listing = list_split_items({"format": "yolo", "root": str(root)}, "train", ["train"], None)
    assert listing.class_names == ["a"] and listing.image_ids == ["x", "y"]
    (root / "data.yaml").unlink()
    with pytest.raises(DatasetError, match="add classes.txt"):
        list_split_items({"format": "yolo", "root": str(root)}, "train", ["train"], None)


def test_class_only_folder_lists_labelled_records_after_the_dataset_classes(tmp_path: Path) -> None:
    """YOLO9000's classification-only split: folder classes continue the class names (a shared one keeps its
    label), each image a class-only record sized from its header; a bad file is a named reject."""
    root = tmp_path / "classes"
    for name, sizes in {"cat": [(30, 20), (16, 16)], "tabby": [(40, 24)]}.items():
        (root / name).mkdir(parents=True)
        for i, size in enumerate(sizes):
            Image.new("RGB", size, (i * 60, 90, 30)).save(root / name / f"{i}.jpg")
    (root / "tabby" / "broken.jpg").write_bytes(b"")
    listing, names = list_class_only(root, ["dog", "cat"])
    assert names == ["dog", "cat", "tabby"] and listing.class_names == names
    loaded = [item.load() for item in listing.items]
    records = [record for record, rejects in loaded if record is not None and not rejects]
    assert [(r.image_id, int(r.labels[0]), r.width, r.height) for r in records] == [
        ("cat/0.jpg", 1, 30, 20),
        ("cat/1.jpg", 1, 16, 16),
        ("tabby/0.jpg", 2, 40, 24),
    ]
    assert all(r.class_only and r.split == CLASS_ONLY_SPLIT for r in records)
    assert [(Path(r.source).name, r.split) for r in listing.rejects] == [("broken.jpg", CLASS_ONLY_SPLIT)]
    with pytest.raises(DatasetError, match="image folder not found"):
        list_class_only(tmp_path / "none", ["dog"])
