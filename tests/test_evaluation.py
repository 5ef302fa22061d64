"""Training's validation (yolov2/evaluation.py): a model with a known output over a few generated images in two
shards, against VOC07 mAP@0.5 worked out by hand; the ranks' shares of a split (every image once, in whole
batches of the one-process sequence) and their parts merged back into the one-process detections."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from yolov2.config import PredictConfig
from yolov2.data.records import ImageRecord
from yolov2.data.shards import ShardSpec, write_shard_bytes
from yolov2.evaluation import (
    PredictedPart,
    compute_metrics,
    merge_parts,
    predict_share,
    share_range,
    validation_metrics,
)
from yolov2.inference import ModelSpec
from yolov2.metrics import DetectionTable

SIZE = 64  # image and network input: no letterbox padding
SPEC = ModelSpec("yolov2_tiny_voc", 2, [[1.0, 1.0]], ["circle", "square"], SIZE)
TOP_LEFT, BOTTOM_RIGHT = [0, 0, 32, 32], [32, 32, 64, 64]  # xyxy absolute pixels, 0-based continuous
# (image id, grey level, ground-truth box, its class): brighter images get higher scores
IMAGES = [
    ("a", 230, TOP_LEFT, 0),
    ("b", 180, BOTTOM_RIGHT, 0),
    ("c", 130, TOP_LEFT, 0),
    ("d", 80, TOP_LEFT, 0),
    ("e", 30, TOP_LEFT, 1),
]


class OneBoxModel(nn.Module):
    """Predicts one box, the top-left quarter, as class 0 on every image, scored by the image's brightness.

    Output (Tensor[B, 1*(5+2), 2, 2]): one anchor of 1x1 cells on a 2x2 grid. Cell (0, 0): tx = ty = tw = th = 0
    gives the box centred at (0.25, 0.25) of the input, 0.5 wide and high; objectness sigmoid(4 * mean pixel);
    class logits (10, -10). The other cells' objectness is sigmoid(-10), under the 0.005 threshold.
    """

    def __init__(self) -> None:
        super().__init__()
        head = torch.zeros(1, 7, 2, 2)
        head[:, 4] = -10.0
        head[:, 5], head[:, 6] = 10.0, -10.0
        self.head = nn.Parameter(head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head.expand(len(x), -1, -1, -1).clone()
        out[:, 4, 0, 0] = 4.0 * x.float().mean(dim=(1, 2, 3))
        return out


def _sample(image_id: str, grey: int, box: list[int], label: int) -> tuple[str, bytes, ImageRecord]:
    ok, jpeg = cv2.imencode(".jpg", np.full((SIZE, SIZE, 3), grey, np.uint8))
    assert ok
    record = ImageRecord(
        image_id=image_id,
        split="val",
        path=f"{image_id}.jpg",
        width=SIZE,
        height=SIZE,
        boxes=[box],
        labels=[label],
        difficult=[False],
        iscrowd=[False],
    )
    return image_id, jpeg.tobytes(), record


@pytest.fixture
def shards(tmp_path: Path) -> list[ShardSpec]:
    specs = []
    for number, part in enumerate((IMAGES[:3], IMAGES[3:])):
        path = tmp_path / f"val-{number:06d}.tar"
        path.write_bytes(write_shard_bytes([_sample(*image) for image in part]))
        specs.append(ShardSpec(str(path), len(part)))
    return specs


def _val_map50(model, shards, predict=None, batch_size=8) -> float:
    """Training's validation in one process: every sample predicted, then scored."""
    part = predict_share(model, SPEC, shards, predict, batch_size)
    return validation_metrics(part.records, part.detections, SPEC.class_names)["map50_voc07"]


def test_val_map50_of_a_known_model_is_the_hand_computed_value(shards):
    # class 0 by decreasing score: a TP, b FP (its box is bottom-right), c TP, d TP, e FP; 4 ground truths.
    # recall .25 .25 .5 .75 .75, precision 1 .5 .67 .75 .6: 11-point AP = (3 x 1 + 5 x .75) / 11.
    # class 1 (image e) has no detection: AP 0. mAP: the mean over the two classes.
    expected = (3 * 1.0 + 5 * 0.75) / 11 / 2
    model = OneBoxModel().train()
    assert _val_map50(model, shards, PredictConfig(input_size=SIZE, letterbox=True), batch_size=2) == pytest.approx(
        expected, abs=1e-6
    )
    assert model.training  # back in the mode it was in
    assert _val_map50(model.eval(), shards) == pytest.approx(expected, abs=1e-6)
    assert not model.training


def test_val_map50_is_one_for_a_model_that_finds_every_box(shards):
    perfect = [(image_id, grey, TOP_LEFT, 0) for image_id, grey, _, _ in IMAGES]
    for number, part in enumerate((perfect[:3], perfect[3:])):
        Path(shards[number].url).write_bytes(write_shard_bytes([_sample(*image) for image in part]))
    # class 1 has no ground truth any more: left out of the mean
    assert _val_map50(OneBoxModel(), shards) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("total", "world", "batch"), [(5, 2, 2), (7, 2, 2), (16, 2, 8), (17, 3, 4), (3, 4, 1), (2, 3, 8), (0, 2, 4)]
)
def test_shares_are_whole_batches_and_cover_every_image_once(total, world, batch):
    shares = [share_range(total, world, rank, batch) for rank in range(world)]
    positions = [p for start, stop in shares for p in range(start, stop)]
    assert positions == list(range(total))  # every image once, in rank order
    one_process = [list(range(i, min(i + batch, total))) for i in range(0, total, batch)]
    for start, stop in shares:  # each share is a run of the one-process batches
        assert start == stop or [b for b in one_process if start <= b[0] < stop][0][0] == start
        assert stop == total or stop % batch == 0
    per_rank = -(-len(one_process) // world)  # batches: ceil, as the training data is dealt
    assert all(stop - start <= per_rank * batch for start, stop in shares)


def test_share_range_refuses_a_rank_outside_the_world():
    with pytest.raises(ValueError):
        share_range(10, 2, 2, 4)


def test_two_shares_merged_equal_one_process_whatever_the_order(shards):
    model = OneBoxModel()
    predict = PredictConfig(input_size=SIZE)
    whole = predict_share(model, SPEC, shards, predict, batch_size=2)
    parts = [predict_share(model, SPEC, shards, predict, 2, None, 2, rank) for rank in (1, 0)]
    assert [p.start for p in parts] == [4, 0] and [len(p.records) for p in parts] == [1, 4]
    detections, records = merge_parts(parts)
    assert [r.image_id for r in records] == [image_id for image_id, *_ in IMAGES]
    assert detections.image_id.tolist() == whole.detections.image_id.tolist() == list("abcde")
    np.testing.assert_array_equal(detections.score, whole.detections.score)
    np.testing.assert_array_equal(detections.boxes, whole.detections.boxes)


def test_merge_parts_refuses_a_gap_or_an_overlap(shards):
    model = OneBoxModel()
    first, second = (predict_share(model, SPEC, shards, None, 2, None, 2, rank) for rank in (0, 1))
    with pytest.raises(ValueError, match="do not tile"):
        merge_parts([second])
    with pytest.raises(ValueError, match="do not tile"):
        merge_parts([first, first, second])
    empty = PredictedPart(5, DetectionTable.empty(), [])  # a rank with no share
    assert len(merge_parts([first, second, empty])[1]) == 5


def test_validation_metrics_are_voc07_voc12_and_coco_ap(shards):
    part = predict_share(OneBoxModel(), SPEC, shards, PredictConfig(input_size=SIZE))
    metrics = validation_metrics(part.records, part.detections, SPEC.class_names)
    assert list(metrics) == ["map50_voc07", "map50_voc12", "coco_AP", "coco_AP50"]
    assert metrics["map50_voc07"] == pytest.approx((3 * 1.0 + 5 * 0.75) / 11 / 2, abs=1e-6)  # as worked out above
    # VOC12 (all points): class 0's envelope is 1 up to recall .25, then .75 up to .75: AP .25 + .5 x .75
    assert metrics["map50_voc12"] == pytest.approx((0.25 + 0.5 * 0.75) / 2, abs=1e-6)
    flat, _ = compute_metrics(part.records, part.detections, SPEC.class_names, ["coco"], "pycocotools")
    for key in ("coco_AP", "coco_AP50"):  # faster-coco-eval (the default) against pycocotools
        assert metrics[key] == pytest.approx(flat[key])
