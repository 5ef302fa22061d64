"""yolov2/data/crops.py: crop rectangles against a pixel-by-pixel enumeration, the reject reasons, the counting
(boxes in == crops + rejects) on real VOC records read back from the shard index's table, and cutting pixels."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from yolov2.data.crops import CropSettings, ObjectCrop, crop_rectangle, cut_crop, object_crops, record_crops
from yolov2.data.images import decode_rgb
from yolov2.data.paths import read_regular_file
from yolov2.data.records import ImageRecord, records_to_table, table_to_records
from yolov2.data.voc import VOC_CLASSES, read_voc
from yolov2.errors import ConfigError


def reference_crop(width: int, height: int, box, margin: float, min_side: int) -> tuple[int, int, int, int] | str:
    """The crop written the slow way: the pixel columns and rows whose unit square overlaps the grown box."""
    x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in box) or x2 <= x1 or y2 <= y1:
        return "degenerate"
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        return "outside"
    gx1, gx2 = x1 - margin * (x2 - x1), x2 + margin * (x2 - x1)
    gy1, gy2 = y1 - margin * (y2 - y1), y2 + margin * (y2 - y1)
    cols = [i for i in range(width) if i + 1 > gx1 and i < gx2]  # pixel i covers [i, i + 1]
    rows = [j for j in range(height) if j + 1 > gy1 and j < gy2]
    if len(cols) < min_side or len(rows) < min_side:
        return "small"
    return cols[0], rows[0], cols[-1] + 1, rows[-1] + 1


def category(result: tuple[int, int, int, int] | str) -> tuple[int, int, int, int] | str:
    if not isinstance(result, str):
        return result
    for word, name in (("degenerate", "degenerate"), ("outside", "outside"), ("smaller than min side", "small")):
        if word in result:
            return name
    raise AssertionError(f"unexpected reason {result!r}")


@pytest.mark.parametrize("margin,min_side", [(0.0, 1), (0.15, 8), (0.5, 16), (0.15, 40)])
def test_crop_rectangles_match_pixel_enumeration(margin, min_side):
    rng = np.random.default_rng(int(margin * 100) + min_side)
    width, height = 97, 61
    centres = rng.uniform(-20, 120, (300, 2))
    sizes = rng.uniform(0.5, 70, (300, 2)) * rng.choice([0.1, 1.0], (300, 1))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
    seen = set()
    for box in boxes.tolist():
        ours = category(crop_rectangle(width, height, box, margin, min_side))
        assert ours == reference_crop(width, height, box, margin, min_side), box
        seen.add(ours if isinstance(ours, str) else "crop")
    assert {"crop", "outside"} | ({"small"} if min_side > 1 else set()) <= seen  # every branch was exercised


def test_integral_box_without_margin_is_the_box_and_margin_grows_each_side_by_its_own_side():
    assert crop_rectangle(100, 80, (10.0, 20.0, 30.0, 60.0), 0.0, 1) == (10, 20, 30, 60)
    # width 20 -> 5 px left and right; height 40 -> 10 px above and below
    assert crop_rectangle(100, 80, (10.0, 20.0, 30.0, 60.0), 0.25, 1) == (5, 10, 35, 70)
    # at the image edges the grown box is clipped, never beyond [0, W] x [0, H]
    assert crop_rectangle(100, 80, (0.0, 0.0, 100.0, 80.0), 0.15, 1) == (0, 0, 100, 80)
    # a float product a hair above a whole number does not add a pixel column: 0.15 * 20 = 3.0000000000000004
    assert crop_rectangle(100, 80, (10.0, 20.0, 30.0, 40.0), 0.15, 1) == (7, 17, 33, 43)


def test_every_box_is_a_crop_or_a_reject_with_its_reason():
    boxes = np.array(
        [
            [10, 10, 50, 50],  # 0 good
            [10, 10, 50, 50],  # 1 difficult
            [10, 10, 50, 50],  # 2 crowd
            [np.nan, 10, 50, 50],  # 3 non-finite
            [50, 10, 10, 50],  # 4 inverted
            [10, 10, 10, 50],  # 5 zero width
            [200, 10, 260, 50],  # 6 outside (image is 100 wide)
            [90, 10, 130, 50],  # 7 clipped to 10 + margin: too small for min side 16
            [1, 1, 5, 5],  # 8 small
        ],
        np.float32,
    )
    labels = np.arange(9)
    difficult = np.zeros(9, bool)
    difficult[1] = True
    crowd = np.zeros(9, bool)
    crowd[2] = True
    crops, rejects = object_crops(100, 80, boxes, labels, difficult, crowd, CropSettings(margin=0.0, min_side=16))
    assert len(crops) + len(rejects) == len(boxes)
    assert [(c.box_index, c.label, c.x1, c.y1, c.x2, c.y2) for c in crops] == [(0, 0, 10, 10, 50, 50)]
    reasons = {r.box_index: r.reason for r in rejects}
    assert [r.label for r in rejects] == [r.box_index for r in rejects]
    assert "difficult" in reasons[1] and "crowd" in reasons[2]
    assert all("degenerate" in reasons[i] for i in (3, 4, 5))
    assert "outside" in reasons[6]
    assert reasons[7] == "smaller than min side after clipping: 10x40 pixels (WxH), min side 16"
    assert "smaller than min side" in reasons[8]

    kept = object_crops(100, 80, boxes, labels, difficult, crowd, CropSettings(0.0, 16, keep_difficult=True))[0]
    assert [c.box_index for c in kept] == [0, 1]
    # no flags given, default settings: box 7 grows by 0.15 * 40 = 6 px to [84, 100) after clipping, 16 px wide
    assert [c.box_index for c in object_crops(100, 80, boxes, labels)[0]] == [0, 1, 2, 7]

    with pytest.raises(ConfigError):
        CropSettings(margin=-0.1)
    with pytest.raises(ConfigError):
        CropSettings(min_side=0)


def test_voc_records_from_the_index_table_give_crops_inside_their_images(shared_data: Path):
    """Real VOC records, through the shard index's Arrow table (as the pretrain stage reads them): every box is a
    crop or a box-level reject naming the image, crops hold their (clipped) box, and cut out of the decoded JPEG."""
    records, _ = read_voc(shared_data / "voc100", "test", check_images=False)
    records = table_to_records(records_to_table(records, VOC_CLASSES))
    settings = CropSettings()
    total_boxes = total_crops = total_rejects = 0
    reasons = set()
    for record in records:
        crops, rejects = record_crops(record, settings)
        assert len(crops) + len(rejects) == record.num_boxes
        total_boxes, total_crops, total_rejects = (
            total_boxes + record.num_boxes,
            total_crops + len(crops),
            total_rejects + len(rejects),
        )
        for crop in crops:
            assert 0 <= crop.x1 < crop.x2 <= record.width and 0 <= crop.y1 < crop.y2 <= record.height
            assert min(crop.width, crop.height) >= settings.min_side
            x1, y1, x2, y2 = record.boxes[crop.box_index]
            assert crop.x1 <= x1 and crop.y1 <= y1 and crop.x2 >= x2 and crop.y2 >= y2
            assert crop.label == record.labels[crop.box_index]
        for reject in rejects:
            assert (reject.source, reject.level, reject.image_id) == (record.path, "box", record.image_id)
            reasons.add(reject.reason.split(": ")[1].split(" ")[0])
    assert total_boxes == total_crops + total_rejects and total_crops > 0.8 * total_boxes
    assert "difficult" in reasons  # voc100 has difficult objects
    for record in records[:3]:
        image = decode_rgb(read_regular_file(record.path), record.path)
        for crop in record_crops(record)[0]:
            assert cut_crop(image, crop).shape == (crop.height, crop.width, 3)


def test_cut_crop_returns_a_contiguous_copy_of_the_rectangle():
    ys, xs = np.mgrid[0:60, 0:90]
    image = np.stack([xs, ys, np.full_like(xs, 7)], axis=-1).astype(np.uint8)
    crop = ObjectCrop(box_index=0, label=3, x1=12, y1=5, x2=40, y2=33)
    pixels = cut_crop(image, crop)
    assert pixels.shape == (28, 28, 3) and pixels.flags.c_contiguous
    assert (pixels[..., 0] == np.arange(12, 40)[None, :]).all()
    assert (pixels[..., 1] == np.arange(5, 33)[:, None]).all()
    pixels[:] = 0
    assert image[5, 12, 2] == 7  # a copy, not a view
    with pytest.raises(ValueError, match="does not fit the 90x60 image"):
        cut_crop(image, ObjectCrop(0, 0, 80, 0, 100, 10))


def test_record_crops_of_an_image_without_boxes():
    crops, rejects = record_crops(ImageRecord("a", "train", "a.jpg", 10, 10))
    assert crops == [] and rejects == []
