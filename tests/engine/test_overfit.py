"""Overfit 8 generated images with yolov2-tiny through the training loop (yolov2/engine/trainer.py), no Ray.

The classic sanity check of a detector: a model that cannot memorise 8 images has a bug in its targets, loss,
decoding or metrics. It is measured end to end with the pieces the pipeline uses (the region loss, the
Predictor, the VOC07 metric) on images the test generates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from yolov2.boxes import letterbox_params, targets_from_boxes
from yolov2.config import LoopConfig, LossConfig, PredictConfig
from yolov2.data.batch import Batch
from yolov2.data.synthetic import SHAPE_CLASSES, write_synthetic_dataset
from yolov2.data.transforms import letterbox
from yolov2.data.voc import read_voc
from yolov2.engine.optim import build_optimizer
from yolov2.engine.precision import choose_precision, detect_hardware
from yolov2.engine.trainer import Hooks, LoopSettings, train
from yolov2.evaluation import compute_metrics, predict_samples
from yolov2.inference import ModelSpec, Predictor

INPUT = 256
STEPS = 300
# yolov2-tiny-voc.cfg's anchors (grid cells at stride 32): the test does not depend on the anchors stage
TINY_VOC_ANCHORS = [[1.08, 1.19], [3.42, 4.41], [6.63, 11.38], [9.42, 5.11], [16.62, 10.52]]


def letterboxed_batch(records, images: list[np.ndarray]) -> Batch:
    """The images letterboxed to INPUT, their boxes mapped the same way (no augmentation)."""
    tensors, samples = [], []
    for record, image in zip(records, images):
        p = letterbox_params(record.width, record.height, INPUT, INPUT)
        sx, sy = p.new_w / record.width, p.new_h / record.height
        tensors.append(torch.from_numpy(letterbox(image, record.boxes, INPUT)[0]).permute(2, 0, 1))  # uint8
        boxes = torch.from_numpy(record.boxes) * torch.tensor([sx, sy, sx, sy])
        boxes += torch.tensor([p.pad_x, p.pad_y, p.pad_x, p.pad_y], dtype=torch.float32)
        samples.append((boxes, torch.from_numpy(record.labels.astype(np.int64))))
    images_tensor = torch.stack(tensors).contiguous(memory_format=torch.channels_last)
    return Batch(
        images_tensor,
        targets_from_boxes(samples, INPUT, INPUT),
        [r.image_id for r in records],
        torch.tensor([[r.width, r.height] for r in records]),
        torch.zeros(len(records), dtype=torch.bool),
        0,
    )


@pytest.mark.slow
def test_yolov2_tiny_overfits_eight_generated_images(tmp_path: Path) -> None:
    import cv2

    root = write_synthetic_dataset(tmp_path / "data", seed=11, splits={"train": 8}, write_coco=False)
    records, rejects = read_voc(root, "train", SHAPE_CLASSES)
    assert len(records) == 8 and not rejects
    assert sum(len(r.boxes) for r in records) >= 16, "the generated images should hold several objects each"
    images = [cv2.cvtColor(cv2.imread(str(Path(root) / r.path)), cv2.COLOR_BGR2RGB) for r in records]
    batch = letterboxed_batch(records, images)

    torch.manual_seed(0)
    spec = ModelSpec("yolov2_tiny_voc", len(SHAPE_CLASSES), TINY_VOC_ANCHORS, list(SHAPE_CLASSES), INPUT)
    precision = choose_precision(detect_hardware("cpu"))  # bf16 only where it is native: emulated, it is 10x slower
    model = spec.build().to(memory_format=precision.memory_format)
    optimizer = build_optimizer(model, "adamw", lr=1e-3, momentum=0.9, weight_decay=0.05)
    settings = LoopSettings(
        loop=LoopConfig(
            epochs=STEPS, lr=1e-3, schedule="cosine", warmup=20, log_every=25, val_every=10**9, checkpoint_every=10**9
        ),
        loss=LossConfig(mode="modern"),
        steps_per_epoch=1,
        accumulation=1,
        images_per_micro_batch=8,
        anchors=torch.tensor(TINY_VOC_ANCHORS),
        num_classes=len(SHAPE_CLASSES),
        amp=precision.amp,
        channels_last=precision.channels_last,
    )
    losses: list[float] = []
    final = train(
        model,
        optimizer,
        lambda epoch, first: [batch],
        settings,
        torch.device("cpu"),
        Hooks(log=lambda metrics, step: losses.append(metrics["loss/total"])),
    )
    assert final.step == STEPS
    assert losses[-1] < 0.25 * losses[0], f"the loss should fall on 8 images, got {losses}"

    predictor = Predictor(model, spec, PredictConfig(input_size=INPUT, letterbox=True), precision=precision)
    samples = [((Path(root) / r.path).read_bytes(), r) for r in records]
    detections, seen = predict_samples(predictor, samples)
    flat, _ = compute_metrics(seen, detections, SHAPE_CLASSES, ["voc07"])
    assert flat["map50_voc07"] >= 0.9, f"train mAP@0.5 {flat['map50_voc07']:.3f} < 0.9 after {STEPS} steps"
