"""Training's validation, :func:`yolov2.evaluation.voc07_map50`: a model with a known output over a few
generated images in two shards, against VOC07 mAP@0.5 worked out by hand."""

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
from yolov2.evaluation import voc07_map50
from yolov2.inference import ModelSpec

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


def test_voc07_map50_of_a_known_model_is_the_hand_computed_value(shards):
    # class 0 by decreasing score: a TP, b FP (its box is bottom-right), c TP, d TP, e FP; 4 ground truths.
    # recall .25 .25 .5 .75 .75, precision 1 .5 .67 .75 .6: 11-point AP = (3 x 1 + 5 x .75) / 11.
    # class 1 (image e) has no detection: AP 0. mAP: the mean over the two classes.
    expected = (3 * 1.0 + 5 * 0.75) / 11 / 2
    model = OneBoxModel().train()
    assert voc07_map50(
        model, SPEC, shards, PredictConfig(input_size=SIZE, letterbox=True), batch_size=2
    ) == pytest.approx(expected, abs=1e-6)
    assert model.training  # back in the mode it was in
    assert voc07_map50(model.eval(), SPEC, shards) == pytest.approx(expected, abs=1e-6)
    assert not model.training


def test_voc07_map50_is_one_for_a_model_that_finds_every_box(shards):
    perfect = [(image_id, grey, TOP_LEFT, 0) for image_id, grey, _, _ in IMAGES]
    for number, part in enumerate((perfect[:3], perfect[3:])):
        Path(shards[number].url).write_bytes(write_shard_bytes([_sample(*image) for image in part]))
    # class 1 has no ground truth any more: left out of the mean
    assert voc07_map50(OneBoxModel(), SPEC, shards) == pytest.approx(1.0)
