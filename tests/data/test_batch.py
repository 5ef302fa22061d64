"""yolov2/data/batch.py: collate (shapes, normalised targets, padding, flags) and the model input on the device."""

from __future__ import annotations

import numpy as np
import torch

from yolov2.data.batch import collate, to_model_input
from yolov2.data.color import ColorJitter, color_params, darknet_color_tensor


def test_collate_shapes_targets_and_padding():
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 80, 3), dtype=np.uint8)
    boxes = [
        np.array([[8, 16, 40, 48], [0, 0, 80, 64]], np.float32),
        np.zeros((0, 4), np.float32),
        np.array([[20, 10, 30, 60]], np.float32),
    ]
    labels = [np.array([2, 0]), np.zeros(0, np.int64), np.array([5])]
    batch = collate(
        images,
        boxes,
        labels,
        ["a", "b", "c"],
        [(800, 640), (10, 20), (30, 40)],
        [False, True, False],
        index=4,
        colors=[None, ColorJitter(0.1, 1.2, 0.9), None],
    )
    assert batch.images.shape == (3, 3, 64, 80) and batch.images.dtype == torch.uint8
    assert batch.images.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch.images[1, 2, 5, 7], torch.tensor(images[1, 5, 7, 2]))  # RGB planes of NHWC
    assert batch.targets.shape == (3, 2, 5)
    for i in range(3):
        for j in range(2):
            if j < len(boxes[i]):
                x1, y1, x2, y2 = boxes[i][j]
                expect = [labels[i][j], (x1 + x2) / 2 / 80, (y1 + y2) / 2 / 64, (x2 - x1) / 80, (y2 - y1) / 64]
                np.testing.assert_allclose(batch.targets[i, j].numpy(), expect, atol=1e-6)
            else:
                assert (batch.targets[i, j] == -1).all()
    assert batch.image_ids == ["a", "b", "c"] and batch.index == 4
    assert batch.orig_sizes.tolist() == [[800, 640], [10, 20], [30, 40]] and batch.repeated.tolist() == [0, 1, 0]
    np.testing.assert_allclose(batch.color.numpy(), [[0, 1, 1], [0.1, 1.2, 0.9], [0, 1, 1]], atol=1e-7)


def test_to_model_input_scales_and_applies_deferred_color():
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8))
    images = images.permute(0, 3, 1, 2)
    x = to_model_input(images)
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(x * 255, images.float())
    params = color_params([ColorJitter(0.05, 1.3, 0.8), None])
    y = to_model_input(images, color=params)
    assert torch.allclose(y, darknet_color_tensor(images.float() / 255, params))
    assert torch.allclose(y[1], x[1])  # identity draw
