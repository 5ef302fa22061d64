"""The generated demo dataset: deterministic, independent per image, balanced, honest boxes, real VOC/COCO.

References are independent of the generator: shape masks are rasterised here with a plain
point-in-polygon test at pixel centres (not OpenCV), VOC files are parsed with ``xml.etree`` and
COCO files with ``pycocotools``.
"""

from __future__ import annotations

import contextlib
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from yolov2.config import SyntheticConfig
from yolov2.data.records import validate_record
from yolov2.data.synthetic import (
    IN_PROGRESS_NAME,
    MIN_VISIBLE,
    SHAPE_CLASSES,
    generate_image,
    generate_scene,
    write_images,
    write_synthetic_dataset,
    write_synthetic_from_config,
)
from yolov2.errors import ConfigError, DatasetError

W, H, MAX_OBJ = 160, 120, 8
SMALL_SPLITS = {"train": 10, "val": 4, "test": 3}


@pytest.fixture(scope="module")
def scenes():
    """300 scenes of 160x120 (enough for balance statistics, fast)."""
    return [generate_scene(7, i, "train", W, H, MAX_OBJ) for i in range(300)]


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _polygon_mask(polygon: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixels whose centre (x + 0.5, y + 0.5) lies inside the polygon (even-odd ray casting)."""
    ys, xs = np.mgrid[0:height, 0:width]
    px, py = xs + 0.5, ys + 0.5
    inside = np.zeros((height, width), bool)
    x0, y0 = polygon[:, 0], polygon[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for ax, ay, bx, by in zip(x0, y0, x1, y1):
        crosses = (ay > py) != (by > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = ax + (py - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (px < x_at)
    return inside


def test_generation_is_deterministic_and_seed_dependent():
    a_img, a_rec = generate_image(3, 5, "val", W, H, MAX_OBJ)
    b_img, b_rec = generate_image(3, 5, "val", W, H, MAX_OBJ)
    assert a_img.dtype == np.uint8 and a_img.shape == (H, W, 3)
    assert np.array_equal(a_img, b_img)
    assert np.array_equal(a_rec.boxes, b_rec.boxes) and np.array_equal(a_rec.labels, b_rec.labels)
    c_img, _ = generate_image(4, 5, "val", W, H, MAX_OBJ)
    d_img, _ = generate_image(3, 5, "test", W, H, MAX_OBJ)
    assert not np.array_equal(a_img, c_img)
    assert not np.array_equal(a_img, d_img)


def test_written_dataset_is_byte_identical_across_runs(tmp_path):
    a = write_synthetic_dataset(tmp_path / "a", seed=1, width=W, height=H, splits=SMALL_SPLITS)
    b = write_synthetic_dataset(tmp_path / "b", seed=1, width=W, height=H, splits=SMALL_SPLITS)
    files_a, files_b = _tree_bytes(a), _tree_bytes(b)
    assert files_a == files_b
    assert sum(k.startswith("JPEGImages/") for k in files_a) == sum(SMALL_SPLITS.values())


def test_image_does_not_depend_on_the_others(tmp_path):
    """Image i is the same generated alone, in reverse order, or in the full run."""
    full = write_synthetic_dataset(tmp_path / "full", seed=2, width=W, height=H, splits={"train": 8})
    chunk = tmp_path / "chunk"
    write_images(chunk, seed=2, split="train", indices=[6, 2], width=W, height=H, max_objects=MAX_OBJ)
    for i in (6, 2):
        name = f"train_{i:06d}"
        assert (chunk / "JPEGImages" / f"{name}.jpg").read_bytes() == (full / "JPEGImages" / f"{name}.jpg").read_bytes()
        assert (chunk / "Annotations" / f"{name}.xml").read_bytes() == (
            full / "Annotations" / f"{name}.xml"
        ).read_bytes()
    alone, _ = generate_image(2, 6, "train", W, H, MAX_OBJ)
    for i in range(6):
        generate_image(2, i, "train", W, H, MAX_OBJ)  # generating others first changes nothing
    assert np.array_equal(alone, generate_image(2, 6, "train", W, H, MAX_OBJ)[0])


def test_boxes_are_valid_integer_and_span_the_size_range(scenes):
    sides = []
    for s in scenes:
        r = s.record
        assert validate_record(r, len(SHAPE_CLASSES)) == []
        assert np.array_equal(r.boxes, np.round(r.boxes)), "boxes must be integer-aligned (exact VOC round trip)"
        assert (r.boxes[:, 2] - r.boxes[:, 0] >= 8).all() and (r.boxes[:, 3] - r.boxes[:, 1] >= 8).all()
        assert len(r.boxes) <= MAX_OBJ
        sides.extend(np.maximum(r.boxes[:, 2] - r.boxes[:, 0], r.boxes[:, 3] - r.boxes[:, 1]).tolist())
    sides = np.array(sides)
    assert sides.min() <= 18, "the smallest objects should be about 14 px"
    assert (sides < 24).mean() > 0.05, "small objects must be common"
    assert (sides > 0.35 * min(W, H)).mean() > 0.05, "large objects must be common"


def test_classes_are_balanced_and_colour_does_not_give_them_away(scenes):
    labels = np.concatenate([s.record.labels for s in scenes])
    counts = np.bincount(labels, minlength=len(SHAPE_CLASSES))
    expected = len(labels) / len(SHAPE_CLASSES)
    assert len(labels) > 800
    assert (np.abs(counts - expected) < 0.2 * expected).all(), counts
    colours = np.array([sh.colour for s in scenes for sh in s.shapes], float)
    shape_labels = np.array([sh.label for s in scenes for sh in s.shapes])
    assert np.array_equal(shape_labels, labels)
    overall = colours.mean(axis=0)
    for c in range(len(SHAPE_CLASSES)):
        per_class = colours[shape_labels == c].mean(axis=0)
        # per-channel std is ~80, so the standard error of a class mean is ~4; 25 is > 5 SE
        assert (np.abs(per_class - overall) < 25).all(), (SHAPE_CLASSES[c], per_class, overall)


def test_some_images_are_empty(scenes):
    empty = np.mean([s.record.num_boxes == 0 for s in scenes])
    assert 0.03 <= empty <= 0.25, empty
    counts = np.array([s.record.num_boxes for s in scenes])
    assert counts.max() >= MAX_OBJ - 1, "busy images must exist"


def test_shapes_have_their_class_geometry(scenes):
    for s in scenes[:60]:
        for sh in s.shapes:
            p, name = sh.polygon, SHAPE_CLASSES[sh.label]
            centre = p.mean(axis=0)
            if name == "square":  # a rotated, possibly stretched square: a rectangle
                assert len(p) == 4
                d1, d2 = np.linalg.norm(p[2] - p[0]), np.linalg.norm(p[3] - p[1])
                assert d1 == pytest.approx(d2, rel=1e-6)
                assert np.linalg.norm(p[1] - p[0]) == pytest.approx(np.linalg.norm(p[3] - p[2]), rel=1e-6)
            elif name == "triangle":
                assert len(p) == 3
            elif name == "star":
                r = np.linalg.norm(p - centre, axis=1)
                assert len(p) == 10
                assert r[1::2].max() < 0.6 * r[0::2].min(), "inner vertices well inside the outer ones"
            elif name == "cross":
                assert len(p) == 12
            else:
                assert len(p) >= 32


def test_every_object_stays_visible_and_its_box_is_tight(scenes):
    overlapped = 0
    for s in scenes[:120]:
        masks = [_polygon_mask(sh.polygon, W, H) for sh in s.shapes]
        for i, (sh, mask, box) in enumerate(zip(s.shapes, masks, s.record.boxes)):
            later = np.zeros_like(mask)
            for m in masks[i + 1 :]:
                later |= m
            visible = mask & ~later
            ratio = visible.sum() / mask.sum()
            # edge pixels of small shapes may disagree between rasterisers: allow a small margin
            assert ratio >= MIN_VISIBLE - 0.08, (s.record.image_id, i, ratio)
            overlapped += ratio < 0.95
            ys, xs = np.nonzero(mask)
            ref = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            assert np.abs(box - ref).max() <= 1, (s.record.image_id, i, box, ref)
            # the drawn pixels show this object's colour where it is on top (noise averages out)
            core = visible.copy()
            core[1:, :] &= visible[:-1, :]
            core[:-1, :] &= visible[1:, :]
            core[:, 1:] &= visible[:, :-1]
            core[:, :-1] &= visible[:, 1:]
            if core.sum() >= 20:
                mean = s.image[core].astype(float).mean(axis=0)
                assert np.abs(mean - np.array(sh.colour)).max() < 12, (s.record.image_id, i, mean, sh.colour)
    assert overlapped > 20, "overlaps must actually occur"


def test_voc_layout_reads_back_with_xml_etree(tmp_path):
    root = write_synthetic_dataset(tmp_path / "syn", seed=5, width=W, height=H, splits=SMALL_SPLITS)
    for split, n in SMALL_SPLITS.items():
        ids = (root / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        assert ids == [f"{split}_{i:06d}" for i in range(n)]
        for i, image_id in enumerate(ids):
            _, rec = generate_image(5, i, split, W, H, 8)
            ann = ET.parse(root / "Annotations" / f"{image_id}.xml").getroot()
            assert (root / "JPEGImages" / ann.findtext("filename")).is_file()
            assert int(ann.findtext("size/width")) == W and int(ann.findtext("size/height")) == H
            objs = ann.findall("object")
            assert len(objs) == rec.num_boxes
            for obj, box, label in zip(objs, rec.boxes, rec.labels):
                assert obj.findtext("name") == SHAPE_CLASSES[label]
                b = [int(obj.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")]
                # VOC: 1-based inclusive pixels
                assert b == [int(box[0]) + 1, int(box[1]) + 1, int(box[2]), int(box[3])]


def test_voc_layout_reads_back_with_read_voc(tmp_path):
    voc = pytest.importorskip("yolov2.data.voc")
    root = write_synthetic_dataset(tmp_path / "syn", seed=5, width=W, height=H, splits=SMALL_SPLITS)
    for split, n in SMALL_SPLITS.items():
        records, rejects = voc.read_voc(root, split, class_names=SHAPE_CLASSES)
        assert rejects == []
        assert len(records) == n
        for i, r in enumerate(records):
            _, ref = generate_image(5, i, split, W, H, 8)
            assert r.image_id == ref.image_id and (r.width, r.height) == (W, H)
            assert np.array_equal(r.boxes, ref.boxes) and np.array_equal(r.labels, ref.labels)
            assert r.clipped_boxes == 0


def test_coco_json_loads_in_pycocotools(tmp_path):
    from pycocotools.coco import COCO

    root = write_synthetic_dataset(tmp_path / "syn", seed=5, width=W, height=H, splits=SMALL_SPLITS)
    for split, n in SMALL_SPLITS.items():
        path = root / "annotations" / f"instances_{split}.json"
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(path))
        assert sorted(coco.getCatIds()) == [1, 2, 3, 4, 5]
        assert [coco.cats[i]["name"] for i in range(1, 6)] == list(SHAPE_CLASSES)
        assert len(coco.getImgIds()) == n
        refs = {rec.image_id: rec for rec in (generate_image(5, i, split, W, H, 8)[1] for i in range(n))}
        assert len(coco.getAnnIds()) == sum(r.num_boxes for r in refs.values())
        assert min(coco.getAnnIds()) == 1
        for img in coco.dataset["images"]:
            stem = Path(img["file_name"]).stem
            assert (root / "JPEGImages" / img["file_name"]).is_file()
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
            ref = refs[stem]
            got = np.array(
                [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
            )
            assert np.array_equal(got.reshape(-1, 4), ref.boxes)
            assert [a["category_id"] - 1 for a in anns] == ref.labels.tolist()


def test_rerun_is_skipped_and_a_new_config_replaces_stale_files(tmp_path):
    out = tmp_path / "syn"
    write_synthetic_dataset(out, seed=0, width=W, height=H, splits={"train": 6, "val": 2})
    marker = json.loads((out / "synthetic.json").read_text())
    assert marker["splits"] == {"train": 6, "val": 2} and marker["class_names"] == list(SHAPE_CLASSES)
    jpg = out / "JPEGImages" / "train_000003.jpg"
    stamp = (jpg.stat().st_ino, jpg.stat().st_mtime_ns)
    before = _tree_bytes(out)
    write_synthetic_dataset(out, seed=0, width=W, height=H, splits={"train": 6, "val": 2})
    assert (jpg.stat().st_ino, jpg.stat().st_mtime_ns) == stamp, "a matching marker must skip regeneration"
    (out / "synthetic.json").write_text("{}")  # a marker that no longer matches: regenerate
    write_synthetic_dataset(out, seed=0, width=W, height=H, splits={"train": 6, "val": 2})
    assert jpg.stat().st_ino != stamp[0], "the file was written again (atomically: a new inode)"
    assert _tree_bytes(out) == before, "regeneration reproduces the same bytes"

    write_synthetic_dataset(out, seed=0, width=W, height=H, splits={"train": 4}, write_coco=False)
    assert sorted(p.stem for p in (out / "JPEGImages").iterdir()) == [f"train_{i:06d}" for i in range(4)]
    assert sorted(p.stem for p in (out / "Annotations").iterdir()) == [f"train_{i:06d}" for i in range(4)]
    assert sorted(p.name for p in (out / "ImageSets" / "Main").iterdir()) == ["train.txt"]
    assert not list((out / "annotations").glob("*.json"))
    assert not list(out.rglob("*.tmp")), "no temporary files left behind"


def test_refuses_a_folder_it_did_not_write_but_resumes_a_killed_run(tmp_path):
    real = tmp_path / "real_voc"
    (real / "JPEGImages").mkdir(parents=True)
    (real / "JPEGImages" / "000001.jpg").write_bytes(b"a real photo")
    with pytest.raises(DatasetError, match="real_voc: refusing"):
        write_synthetic_dataset(real, width=W, height=H, splits={"train": 2})
    assert (real / "JPEGImages" / "000001.jpg").read_bytes() == b"a real photo"

    out = tmp_path / "syn"
    reference = _tree_bytes(write_synthetic_dataset(tmp_path / "ref", width=W, height=H, splits={"train": 3}))
    write_images(out, seed=0, split="train", indices=[0], width=W, height=H, max_objects=MAX_OBJ)
    (out / IN_PROGRESS_NAME).write_text("killed mid-run")  # what a killed run leaves behind
    write_synthetic_dataset(out, width=W, height=H, splits={"train": 3})
    assert _tree_bytes(out) == reference


def test_from_config(tmp_path, capsys):
    cfg = SyntheticConfig(num_train=3, num_val=2, num_test=1, image_size=(96, 64), max_objects=3, seed=9)
    root = write_synthetic_from_config(cfg, tmp_path / "syn", progress=True)
    lines = capsys.readouterr().err.splitlines()  # one progress over every split
    assert lines[0] == "[synthetic] 0/6 images (0%) elapsed 0:00:00"
    assert lines[-1].startswith("[synthetic] 6/6 images (100%) ")
    assert (root / "ImageSets" / "Main" / "test.txt").read_text().split() == ["test_000000"]
    ann = ET.parse(root / "Annotations" / "val_000001.xml").getroot()
    assert (ann.findtext("size/width"), ann.findtext("size/height")) == ("96", "64")
    assert (root / "annotations" / "instances_train.json").is_file()


def _short_sides(min_size: float) -> np.ndarray:
    boxes = np.concatenate(
        [generate_scene(0, i, "train", 320, 240, 8, min_size=min_size).record.boxes for i in range(40)]
    )
    return np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


def test_difficulty_knobs_change_the_objects_and_the_marker(tmp_path):
    """A larger min_object_size removes the small objects and writes a new dataset (the marker holds the knob);
    at the defaults the marker is the one earlier versions wrote, so existing datasets are not regenerated."""
    default_sides, big_sides = _short_sides(14.0), _short_sides(40.0)
    assert default_sides.min() < 20 <= big_sides.min()
    assert np.median(big_sides) > np.median(default_sides)

    default = write_synthetic_dataset(
        tmp_path / "default", width=320, height=240, splits={"train": 2}, write_coco=False
    )
    big = write_synthetic_dataset(
        tmp_path / "big", width=320, height=240, splits={"train": 2}, write_coco=False, min_size=40.0
    )
    assert json.loads((big / "synthetic.json").read_text())["min_size"] == 40.0
    assert "min_size" not in json.loads((default / "synthetic.json").read_text())
    with pytest.raises(ConfigError, match="min_visible"):
        write_synthetic_from_config(SyntheticConfig(min_visible=1.5), tmp_path / "bad")
