"""yolov2/data/voc.py on the real VOC-layout datasets and on broken files made here.

The reference is plain ``xml.etree`` over the same files with the devkit's convention written out
in the test (pixel i, 1-based, covers [i-1, i]); the bad inputs are written by hand, not by the
code under test.
"""

from __future__ import annotations

import functools
import io
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from corpus.special import SPECIAL_KINDS, finishes_within, make_special
from yolov2.data.records import ImageRecord, Reject
from yolov2.data.voc import (
    VOC_CLASSES,
    read_voc,
    read_voc_item,
    voc_object_names,
    voc_spec_root,
    voc_split_ids,
    write_voc,
    write_voc_annotation,
)
from yolov2.errors import DatasetError


def image_level(rejects: list[Reject]) -> list[Reject]:
    return [r for r in rejects if r.level == "image"]


def assert_accounted(n_in: int, records: list[ImageRecord], rejects: list[Reject]) -> None:
    assert n_in == len(records) + len(image_level(rejects))


def reference_objects(xml_path: Path) -> list[dict]:
    """Objects of a VOC XML with plain ElementTree, converted by hand to 0-based continuous xyxy."""
    out = []
    for obj in ET.parse(xml_path).getroot().iter("object"):
        bb = obj.find("bndbox")
        xmin, ymin, xmax, ymax = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        out.append(
            {
                "name": obj.findtext("name").strip(),
                "box": [xmin - 1, ymin - 1, xmax, ymax],
                "difficult": int(obj.findtext("difficult") or 0) == 1,
            }
        )
    return out


def records_as_dicts(records: list[ImageRecord]) -> list[dict]:
    return [r.to_dict() for r in records]


# --- real data -------------------------------------------------------------------------------


def test_voc_classes_match_darknet_voc_names(shared_data: Path) -> None:
    names = (shared_data / "darknet_cfg" / "voc.names").read_text().split()
    assert list(VOC_CLASSES) == names


def test_voc100_counts_and_every_box_match_a_plain_parse(shared_data: Path) -> None:
    root = shared_data / "voc100"
    ids = (root / "ImageSets" / "Main" / "test.txt").read_text().split()
    records, rejects = read_voc(root, "test")
    assert rejects == []
    assert_accounted(len(ids), records, rejects)
    assert [r.image_id for r in records] == ids
    n_boxes = n_difficult = 0
    for record in records:
        ref = reference_objects(root / "Annotations" / f"{record.image_id}.xml")
        size = ET.parse(root / "Annotations" / f"{record.image_id}.xml").getroot().find("size")
        assert (record.width, record.height) == (int(size.findtext("width")), int(size.findtext("height")))
        assert record.split == "test" and record.clipped_boxes == 0
        assert Path(record.path) == (root / "JPEGImages" / f"{record.image_id}.jpg").absolute()
        np.testing.assert_array_equal(record.boxes, np.array([o["box"] for o in ref], np.float32).reshape(-1, 4))
        assert record.labels.tolist() == [VOC_CLASSES.index(o["name"]) for o in ref]
        assert record.difficult.tolist() == [o["difficult"] for o in ref]
        assert not record.iscrowd.any()
        n_boxes += len(ref)
        n_difficult += sum(o["difficult"] for o in ref)
    # the plain count, and the dataset README's numbers
    assert sum(r.num_boxes for r in records) == n_boxes == 273
    assert sum(int(r.difficult.sum()) for r in records) == n_difficult == 38
    assert len({int(lab) for r in records for lab in r.labels}) == 20


@pytest.mark.parametrize("split, n_images", [("train", 160), ("test", 40), (None, 200)])
def test_raccoon_splits_including_grayscale_images(shared_data: Path, split: str | None, n_images: int) -> None:
    root = shared_data / "raccoon"
    if split is None:
        ids = sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
    else:
        ids = (root / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
    records, rejects = read_voc(root, split, class_names=["raccoon"])
    assert rejects == []
    assert len(records) == len(ids) == n_images
    assert_accounted(len(ids), records, rejects)
    n_boxes = sum(len(ET.parse(root / "Annotations" / f"{i}.xml").getroot().findall("object")) for i in ids)
    assert sum(r.num_boxes for r in records) == n_boxes
    assert {r.split for r in records} == {split or "all"}
    if split is None:
        assert n_boxes == 217
        gray = [r for r in records if Image.open(r.path).mode == "L"]
        assert len(gray) == 3  # grayscale JPEGs are accepted, not rejected


def test_read_voc_item_is_the_per_image_unit(shared_data: Path) -> None:
    root = shared_data / "voc100"
    records, _ = read_voc(root, "test")
    record, rejects = read_voc_item(root, records[5].image_id, "test")
    assert rejects == [] and record is not None
    assert record.to_dict() == records[5].to_dict()


def test_voc100_write_then_read_is_lossless(shared_data: Path, tmp_path: Path) -> None:
    records, _ = read_voc(shared_data / "voc100", "test")
    written = write_voc(records, VOC_CLASSES, tmp_path / "VOC", "test", images="symlink")
    again, rejects = read_voc(tmp_path / "VOC", "test")
    assert rejects == []
    assert_accounted(100, again, rejects)
    assert records_as_dicts(again) == records_as_dicts(written)
    for a, b in zip(records, again):
        assert {**a.to_dict(), "path": ""} == {**b.to_dict(), "path": ""}
        assert Path(b.path).read_bytes() == Path(a.path).read_bytes()


def test_fractional_coordinates_and_crowd_flag_round_trip(tmp_path: Path) -> None:
    root = make_root(tmp_path, [("a", jpeg(40, 30), None)])
    record = ImageRecord(
        "a",
        "test",
        str(root / "JPEGImages" / "a.jpg"),
        40,
        30,
        boxes=[[0.25, 1.5, 10.125, 20.0], [3, 4, 39.75, 29.5]],
        labels=[1, 0],
        difficult=[True, False],
        iscrowd=[False, True],
    )
    write_voc_annotation(record, ["cat", "dog"], root / "Annotations" / "a.xml")
    (root / "ImageSets" / "Main" / "test.txt").write_text("a\n")
    again, rejects = read_voc(root, "test", class_names=["cat", "dog"])
    assert rejects == []
    assert_accounted(1, again, rejects)
    assert again[0].to_dict() == record.to_dict()
    xmins = [float(e.text) for e in ET.parse(root / "Annotations" / "a.xml").getroot().iter("xmin")]
    assert xmins == [1.25, 4.0]  # the writer adds VOC's 1-based offset back


# --- broken inputs made here -----------------------------------------------------------------


def jpeg(width: int, height: int, mode: str = "RGB") -> bytes:
    arr = np.random.default_rng(width * height).integers(0, 256, (height, width, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


def xml_text(filename: str, size: tuple[int, int] | None, objects: list[tuple[str, tuple, int]]) -> str:
    """A VOC XML written by hand. objects: (name, (xmin, ymin, xmax, ymax) as VOC text, difficult)."""
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>" if size else ""
    objs = "".join(
        f"<object><name>{n}</name><truncated>0</truncated><difficult>{d}</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects
    )
    return f"<annotation><folder>VOC</folder><filename>{filename}</filename>{size_xml}{objs}</annotation>"


def make_root(tmp_path: Path, items: list[tuple[str, bytes | None, str | None]], split: str = "test") -> Path:
    """A VOC root: items are (image id, image bytes or None for no file, XML text or None for none)."""
    root = tmp_path / "VOCdevkit" / "VOC2007"
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for image_id, data, xml in items:
        if data is not None:
            (root / "JPEGImages" / f"{image_id}.jpg").write_bytes(data)
        if xml is not None:
            (root / "Annotations" / f"{image_id}.xml").write_text(xml, encoding="utf-8")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i, _, _ in items), encoding="utf-8")
    return root


GOOD_OBJ = ("dog", (11, 21, 40, 50), 0)

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<annotation><filename>&lol9;</filename><size><width>80</width><height>60</height></size></annotation>
"""

# (case name, image id, image bytes, xml text, where the reject points, words the reason must contain)
IMAGE_LEVEL_CASES = [
    (
        "truncated_jpeg",
        "cut",
        jpeg(80, 60)[:-600],
        xml_text("cut.jpg", (80, 60), [GOOD_OBJ]),
        "JPEGImages/cut.jpg",
        ["truncated JPEG"],
    ),
    (
        "png_named_jpg",
        "fake",
        png(80, 60),
        xml_text("fake.jpg", (80, 60), [GOOD_OBJ]),
        "Annotations/fake.xml",
        ["content is PNG", "named .jpg"],
    ),
    (
        "malformed_xml",
        "bad",
        jpeg(80, 60),
        "<annotation><size><width>80</width></annotation>",
        "Annotations/bad.xml",
        ["malformed XML"],
    ),
    (
        "size_disagrees",
        "size",
        jpeg(80, 60),
        xml_text("size.jpg", (60, 80), [GOOD_OBJ]),
        "Annotations/size.xml",
        ["60x80", "80x60"],
    ),
    (
        "missing_image",
        "gone",
        None,
        xml_text("gone.jpg", (80, 60), [GOOD_OBJ]),
        "Annotations/gone.xml",
        ["image file is missing", "gone.jpg"],
    ),
    ("missing_xml", "noxml", jpeg(80, 60), None, "Annotations/noxml.xml", ["annotation file is missing"]),
    ("billion_laughs", "lol", jpeg(80, 60), BILLION_LAUGHS, "Annotations/lol.xml", ["entities", "without expanding"]),
    ("wrong_root", "root", jpeg(80, 60), "<html><body/></html>", "Annotations/root.xml", ["<html>", "<annotation>"]),
    ("empty_image", "zero", b"", xml_text("zero.jpg", (80, 60), [GOOD_OBJ]), "JPEGImages/zero.jpg", ["zero bytes"]),
]


@pytest.mark.parametrize("case", IMAGE_LEVEL_CASES, ids=[c[0] for c in IMAGE_LEVEL_CASES])
def test_bad_image_is_a_named_image_level_reject(tmp_path: Path, case) -> None:
    _, image_id, data, xml, where, words = case
    good = ("ok", jpeg(80, 60), xml_text("ok.jpg", (80, 60), [GOOD_OBJ]))
    root = make_root(tmp_path, [good, (image_id, data, xml)])
    start = time.perf_counter()
    records, rejects = read_voc(root, "test", class_names=["dog"])
    assert time.perf_counter() - start < 5  # the billion laughs are not expanded
    assert [r.image_id for r in records] == ["ok"]
    assert len(rejects) == 1
    (reject,) = rejects
    assert reject.level == "image" and reject.image_id == image_id and reject.split == "test"
    assert reject.source.endswith(where), reject
    for word in words:
        assert word in reject.reason, reject
    assert_accounted(2, records, rejects)
    with pytest.raises(DatasetError) as err:
        read_voc(root, "test", class_names=["dog"], strict=True)
    assert where in str(err.value) and words[0] in str(err.value)


def test_grayscale_and_cmyk_jpegs_are_accepted(tmp_path: Path) -> None:
    root = make_root(
        tmp_path,
        [
            ("gray", jpeg(80, 60, "L"), xml_text("gray.jpg", (80, 60), [GOOD_OBJ])),
            ("cmyk", jpeg(80, 60, "CMYK"), xml_text("cmyk.jpg", (80, 60), [GOOD_OBJ])),
        ],
    )
    records, rejects = read_voc(root, "test", class_names=["dog"], strict=True)
    assert rejects == [] and [r.image_id for r in records] == ["gray", "cmyk"]
    assert_accounted(2, records, rejects)


def test_non_ascii_file_names(tmp_path: Path) -> None:
    root = make_root(tmp_path, [("été_01", jpeg(80, 60), xml_text("été_01.jpg", (80, 60), [GOOD_OBJ]))])
    records, rejects = read_voc(root, "test", class_names=["dog"], strict=True)
    assert rejects == [] and records[0].image_id == "été_01"
    assert_accounted(1, records, rejects)
    assert Path(records[0].path).name == "été_01.jpg"
    out = write_voc(records, ["dog"], tmp_path / "copy", "test")
    again, _ = read_voc(tmp_path / "copy", "test", class_names=["dog"])
    assert {**again[0].to_dict(), "path": ""} == {**records[0].to_dict(), "path": ""}
    assert again[0].path == out[0].path


def test_box_outside_image_is_clipped_and_counted(tmp_path: Path) -> None:
    objects = [("dog", (-9, 5, 50, 70), 0), ("dog", (70, 10, 95, 30), 1), GOOD_OBJ]
    root = make_root(tmp_path, [("clip", jpeg(80, 60), xml_text("clip.jpg", (80, 60), objects))])
    records, rejects = read_voc(root, "test", class_names=["dog"], strict=True)
    assert rejects == []
    assert_accounted(1, records, rejects)
    (r,) = records
    assert r.clipped_boxes == 2
    # (-9-1, 5-1, 50, 70) clipped to the 80x60 image; (69, 9, 95, 30) -> x2 = 80
    np.testing.assert_array_equal(r.boxes, np.array([[0, 4, 50, 60], [69, 9, 80, 30], [10, 20, 40, 50]], np.float32))
    assert r.difficult.tolist() == [False, True, False]


@pytest.mark.parametrize(
    "obj, words",
    [
        (("dog", (51, 20, 50, 40), 0), ["zero-area"]),  # VOC xmax = xmin - 1: zero width (xmin == xmax is 1 px wide)
        (("dog", (60, 20, 40, 40), 0), ["inverted"]),
        (("dog", (100, 100, 120, 130), 0), ["entirely outside"]),
        (("dog", ("nan", 20, 40, 40), 0), ["non-finite"]),
        (("dog", ("ten", 20, 40, 40), 0), ["xmin", "not a number"]),
        (("unicorn", (11, 21, 40, 50), 0), ["unknown class name 'unicorn'"]),
        (("dog", (11, 21, 40, 50), 7), ["difficult", "expected 0 or 1"]),
    ],
    ids=["zero_area", "inverted", "outside", "nan", "not_a_number", "unknown_class", "bad_difficult"],
)
def test_bad_object_is_a_box_level_reject(tmp_path: Path, obj, words: list[str]) -> None:
    root = make_root(tmp_path, [("img", jpeg(80, 60), xml_text("img.jpg", (80, 60), [GOOD_OBJ, obj]))])
    records, rejects = read_voc(root, "test", class_names=["dog"])
    assert len(records) == 1 and records[0].num_boxes == 1  # the good box stays
    np.testing.assert_array_equal(records[0].boxes, [[10, 20, 40, 50]])
    (reject,) = rejects
    assert reject.level == "box" and reject.source.endswith("Annotations/img.xml")
    assert reject.reason.startswith("object 1 ")
    for word in words:
        assert word in reject.reason, reject
    assert reject.unknown_class == ("unicorn" if obj[0] == "unicorn" else None)  # counted without reading reasons
    assert_accounted(1, records, rejects)
    with pytest.raises(DatasetError, match="img.xml: object 1"):
        read_voc(root, "test", class_names=["dog"], strict=True)


def test_object_names_alone_and_none_for_a_file_the_reader_would_reject(tmp_path: Path) -> None:
    """The driver's names-only scan (class_names: auto): the reader's names, and no crash on bad files."""
    cat = ("cat ", (1, 1, 5, 5), 0)
    root = make_root(
        tmp_path,
        [
            ("a", None, xml_text("a.jpg", (80, 60), [GOOD_OBJ, cat, ("", (1, 1, 5, 5), 0)])),
            ("bad", None, "<annotation><object><name>dog</name>"),
            ("laughs", None, BILLION_LAUGHS),
            ("root", None, "<html><object><name>dog</name></object></html>"),
        ],
    )
    assert voc_object_names(root, "a") == ["dog", "cat"]  # stripped; a nameless object is no class
    for image_id in ("bad", "laughs", "root", "missing", "../a", "a\udcff"):
        assert voc_object_names(root, image_id) is None, image_id
    (tmp_path / "out.xml").write_text(xml_text("o.jpg", (8, 8), [GOOD_OBJ]))
    (root / "Annotations" / "link.xml").symlink_to(tmp_path / "out.xml")
    assert voc_object_names(root, "link") == ["dog"]
    assert voc_object_names(root, "link", confine_to=root) is None  # outside the dataset root
    assert voc_spec_root(tmp_path, "VOC2007/trainval") == (tmp_path / "VOC2007", "trainval")
    assert voc_spec_root(tmp_path, "train") == (tmp_path, "train")


@pytest.mark.parametrize("check_images", [True, False])
def test_missing_or_zero_size_comes_from_the_image_header(tmp_path: Path, check_images: bool) -> None:
    """Hand-labelled sets often lack <size>: the header gives it (even without check_images), and the
    record says so; a box is clipped to the header's size."""
    zero = xml_text("zero.jpg", (80, 60), [GOOD_OBJ]).replace(
        "<width>80</width><height>60</height>", "<width>0</width><height>0</height>"
    )
    root = make_root(
        tmp_path,
        [
            ("nosize", jpeg(80, 60), xml_text("nosize.jpg", None, [("dog", (11, 21, 90, 50), 0)])),
            ("zero", jpeg(70, 50), zero),
            ("sized", jpeg(80, 60), xml_text("sized.jpg", (80, 60), [GOOD_OBJ])),
        ],
    )
    records, rejects = read_voc(root, "test", class_names=["dog"], check_images=check_images)
    assert rejects == []
    assert [(r.image_id, r.width, r.height, r.size_from_image) for r in records] == [
        ("nosize", 80, 60, True),
        ("zero", 70, 50, True),
        ("sized", 80, 60, False),
    ]
    assert records[0].boxes.tolist() == [[10, 20, 80, 50]] and records[0].clipped_boxes == 1  # xmax 90 -> 80
    assert_accounted(3, records, rejects)


def test_missing_size_with_an_unreadable_image_names_the_image(tmp_path: Path) -> None:
    root = make_root(tmp_path, [("cut", jpeg(80, 60)[:-600], xml_text("cut.jpg", None, [GOOD_OBJ]))])
    records, rejects = read_voc(root, "test", class_names=["dog"], check_images=False)
    assert records == [] and rejects[0].source.endswith("JPEGImages/cut.jpg") and "truncated JPEG" in rejects[0].reason


def test_check_images_off_still_finds_missing_files_but_not_content(tmp_path: Path) -> None:
    root = make_root(
        tmp_path,
        [
            ("cut", jpeg(80, 60)[:-600], xml_text("cut.jpg", (80, 60), [GOOD_OBJ])),
            ("gone", None, xml_text("gone.jpg", (80, 60), [GOOD_OBJ])),
        ],
    )
    records, rejects = read_voc(root, "test", class_names=["dog"], check_images=False)
    assert [r.image_id for r in records] == ["cut"]
    assert [r.image_id for r in rejects] == ["gone"]
    assert_accounted(2, records, rejects)


def test_split_none_reads_every_xml_and_duplicates_are_rejected(tmp_path: Path) -> None:
    items = [(f"im{i}", jpeg(80, 60), xml_text(f"im{i}.jpg", (80, 60), [GOOD_OBJ])) for i in range(3)]
    root = make_root(tmp_path, items)
    (root / "ImageSets" / "Main" / "test.txt").write_text("im0\nim1\n\nim0\nim2\n")
    records, rejects = read_voc(root, "test", class_names=["dog"])
    assert [r.image_id for r in records] == ["im0", "im1", "im2"]
    assert len(rejects) == 1 and "listed more than once" in rejects[0].reason
    assert_accounted(4, records, rejects)
    records, rejects = read_voc(root, None, class_names=["dog"])
    assert [r.image_id for r in records] == ["im0", "im1", "im2"] and rejects == []
    assert_accounted(3, records, rejects)


def test_image_found_through_filename_tag_and_path_traversal_refused(tmp_path: Path) -> None:
    root = make_root(tmp_path, [("p", None, xml_text("p.png", (80, 60), [GOOD_OBJ]))])
    (root / "JPEGImages" / "p.png").write_bytes(png(80, 60))
    records, rejects = read_voc(root, "test", class_names=["dog"])
    assert rejects == [] and records[0].path.endswith("JPEGImages/p.png")
    assert_accounted(1, records, rejects)
    (root / "ImageSets" / "Main" / "test.txt").write_text("../../../etc/passwd\n")
    records, rejects = read_voc(root, "test", class_names=["dog"])
    assert records == [] and "not a plain file name" in rejects[0].reason
    assert_accounted(1, records, rejects)


def test_not_a_voc_root_or_missing_split_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no JPEGImages"):
        read_voc(tmp_path, "test")
    root = make_root(tmp_path, [])
    with pytest.raises(DatasetError, match=r"trainval.txt: split file not found \(splits here: test\)"):
        read_voc(root, "trainval")


def test_confine_to_rejects_files_linked_from_outside_the_root(tmp_path: Path) -> None:
    """A symlinked image or XML that leads out of the root is an image-level reject when confined."""
    import os

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "photo.jpg").write_bytes(jpeg(80, 60))
    (outside / "ann.xml").write_text(xml_text("photo.jpg", (80, 60), [GOOD_OBJ]))
    items = [(i, jpeg(80, 60), xml_text(f"{i}.jpg", (80, 60), [GOOD_OBJ])) for i in ("ok", "img_out", "xml_out")]
    items.append(("inside", None, xml_text("inside.jpg", (80, 60), [GOOD_OBJ])))
    root = make_root(tmp_path, items)
    (root / "JPEGImages" / "img_out.jpg").unlink()
    os.symlink(outside / "photo.jpg", root / "JPEGImages" / "img_out.jpg")
    (root / "Annotations" / "xml_out.xml").unlink()
    os.symlink(outside / "ann.xml", root / "Annotations" / "xml_out.xml")
    os.symlink("ok.jpg", root / "JPEGImages" / "inside.jpg")  # stays inside: fine

    records, rejects = read_voc(root, "test", class_names=["dog"], confine_to=root)
    assert [r.image_id for r in records] == ["ok", "inside"]
    by_id = {r.image_id: r for r in rejects}
    assert set(by_id) == {"img_out", "xml_out"} and all(r.level == "image" for r in rejects)
    assert by_id["img_out"].source.endswith("JPEGImages/img_out.jpg")
    assert by_id["xml_out"].source.endswith("Annotations/xml_out.xml")
    assert all("points outside the dataset root" in r.reason for r in rejects)
    assert str(outside / "photo.jpg") in by_id["img_out"].reason
    assert_accounted(4, records, rejects)
    with pytest.raises(DatasetError, match="img_out.jpg.*points outside the dataset root"):
        read_voc(root, "test", class_names=["dog"], confine_to=root, strict=True)
    # Without confine_to (library default, e.g. a root written with images="symlink") links are followed.
    records, rejects = read_voc(root, "test", class_names=["dog"])
    assert len(records) == 4 and rejects == []


def test_image_id_that_is_not_utf8_is_a_named_reject(tmp_path: Path) -> None:
    """split=None lists Annotations/: a file name byte that is not UTF-8 must not reach records or Arrow."""
    import os

    from yolov2.data.records import rejects_to_table

    root = make_root(tmp_path, [("ok", jpeg(80, 60), xml_text("ok.jpg", (80, 60), [GOOD_OBJ]))])
    with open(os.fsencode(root / "Annotations") + b"/bad_\xff.xml", "wb") as f:
        f.write(xml_text("ok.jpg", (80, 60), [GOOD_OBJ]).encode())
    records, rejects = read_voc(root, None, class_names=["dog"])
    assert [r.image_id for r in records] == ["ok"]
    (reject,) = rejects
    assert reject.level == "image" and reject.image_id == "bad_\\xff"
    assert "not valid UTF-8" in reject.reason and reject.source.endswith("Annotations/bad_\\xff.xml")
    assert rejects_to_table(rejects).num_rows == 1  # Arrow accepts every string of the reject
    assert_accounted(2, records, rejects)
    with pytest.raises(DatasetError, match=r"bad_\\xff"):
        read_voc(root, None, class_names=["dog"], strict=True)


# --- special files, image ids, per-class files (issue 15) -------------------------------------


@pytest.mark.parametrize("kind", sorted(SPECIAL_KINDS))
@pytest.mark.parametrize("where", ["Annotations", "JPEGImages"])
def test_special_file_is_a_reject_naming_its_type_and_never_hangs(tmp_path: Path, where: str, kind: str) -> None:
    """A FIFO, socket, device link or folder as the XML or the image: refused by type, unopened
    (a FIFO would block the read for ever), with or without check_images and <size>."""
    items = [
        ("ok", jpeg(80, 60), xml_text("ok.jpg", (80, 60), [GOOD_OBJ])),
        ("odd", jpeg(80, 60), xml_text("odd.jpg", None, [GOOD_OBJ])),
    ]
    root = make_root(tmp_path, items)
    path = make_special(root / where / ("odd.xml" if where == "Annotations" else "odd.jpg"), kind)
    for check_images in (True, False):
        records, rejects = finishes_within(10, functools.partial(read_voc, root, "test", ["dog"], check_images))
        assert [r.image_id for r in records] == ["ok"]
        (reject,) = rejects
        assert reject.source == str(path) and reject.image_id == "odd" and reject.level == "image"
        assert f"not a regular file but {SPECIAL_KINDS[kind]}" in reject.reason
        assert_accounted(2, records, rejects)
    with pytest.raises(DatasetError, match=f"odd.(xml|jpg) is not a regular file but {re.escape(SPECIAL_KINDS[kind])}"):
        finishes_within(10, lambda: read_voc(root, "test", ["dog"], strict=True))


def test_split_file_that_is_not_a_regular_file_is_a_clear_error(tmp_path: Path) -> None:
    root = make_root(tmp_path, [("ok", jpeg(80, 60), xml_text("ok.jpg", (80, 60), [GOOD_OBJ]))])
    make_special(root / "ImageSets" / "Main" / "test.txt", "fifo")
    with pytest.raises(DatasetError, match=r"test.txt: cannot read split file \(not a regular file but a named pipe"):
        finishes_within(10, lambda: read_voc(root, "test", ["dog"]))


def test_split_file_ids_are_whole_lines_with_their_spaces_and_tabs(tmp_path: Path) -> None:
    """``pair 01`` is one id, not ``pair``; a decoy ``pair.jpg`` of another size must not become the record."""
    items = [
        ("pair 01", jpeg(80, 60), xml_text("pair 01.jpg", (80, 60), [GOOD_OBJ])),
        ("pair", jpeg(40, 30), xml_text("pair.jpg", (40, 30), [("dog", (1, 1, 9, 9), 0)])),
        ("a  b\tc", jpeg(80, 60), xml_text("a  b\tc.jpg", (80, 60), [GOOD_OBJ])),
        ("missing 01", None, None),
    ]
    root = make_root(tmp_path, items)
    text = "\ufeffpair 01\r\n  a  b\tc \t\n\n missing 01\n"  # BOM, CRLF, padding, a blank line
    (root / "ImageSets" / "Main" / "test.txt").write_text(text, encoding="utf-8")
    assert voc_split_ids(root, "test") == (["pair 01", "a  b\tc", "missing 01"], [])
    records, rejects = read_voc(root, "test", class_names=["dog"])
    assert [(r.image_id, r.width, Path(r.path).name) for r in records] == [
        ("pair 01", 80, "pair 01.jpg"),
        ("a  b\tc", 80, "a  b\tc.jpg"),
    ]
    (reject,) = rejects
    assert reject.source.endswith("Annotations/missing 01.xml") and "annotation file is missing" in reject.reason
    assert_accounted(3, records, rejects)


def test_per_class_files_are_id_then_flag_and_other_lines_are_named_rejects(tmp_path: Path) -> None:
    items = [(i, jpeg(80, 60), xml_text(f"{i}.jpg", (80, 60), [GOOD_OBJ])) for i in ("pair 01", "im1", "im2", "im3")]
    root = make_root(tmp_path, items)
    split_file = root / "ImageSets" / "Main" / "dog_test.txt"
    split_file.write_text("pair 01  1\nim1 -1\nim2\t0\n\nim3 2\nim3\n")  # the devkit writes "%s %2d"
    ids, line_rejects = voc_split_ids(root, "dog_test", ["cat", "dog"])
    assert ids == ["pair 01", "im1", "im2"]
    assert [(r.source, r.level, r.split) for r in line_rejects] == [
        (f"{split_file}:5", "image", "dog_test"),
        (f"{split_file}:6", "image", "dog_test"),
    ]
    assert "line 5 'im3 2' is not '<image id> <flag>'" in line_rejects[0].reason
    assert "line 6 'im3' is not" in line_rejects[1].reason
    records, rejects = read_voc(root, "dog_test", class_names=["dog"])
    assert [r.image_id for r in records] == ids and rejects == line_rejects
    assert_accounted(5, records, rejects)
    with pytest.raises(DatasetError, match=r"dog_test.txt:5: line 5 'im3 2'"):
        read_voc(root, "dog_test", class_names=["dog"], strict=True)
    # Not a class name: a plain split file, one whole line per id.
    assert voc_split_ids(root, "dog_test", ["cat"])[0] == ["pair 01  1", "im1 -1", "im2\t0", "im3 2", "im3"]
    with pytest.raises(DatasetError, match=r"splits here: test\)"):  # per-class files are not offered as splits
        read_voc(root, "nope", class_names=["dog"])


def test_an_id_listed_twice_stops_strict_mode(tmp_path: Path) -> None:
    root = make_root(tmp_path, [("a b", jpeg(80, 60), xml_text("a b.jpg", (80, 60), [GOOD_OBJ]))])
    (root / "ImageSets" / "Main" / "test.txt").write_text("a b\n a b \n")
    records, rejects = read_voc(root, "test", class_names=["dog"])
    assert [r.image_id for r in records] == ["a b"] and "'a b' is listed more than once" in rejects[0].reason
    with pytest.raises(DatasetError, match="test.txt: image id 'a b' is listed more than once"):
        read_voc(root, "test", class_names=["dog"], strict=True)
