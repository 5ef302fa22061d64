"""One step of the training loop against the same step written out plainly (forward, region loss, backward,
SGD): the loop's split backward (loss on its own thread budget, then the network) must give the same weights."""

from __future__ import annotations

import copy

import pytest
import torch

from yolov2.config import LoopConfig, LossConfig
from yolov2.data.batch import Batch, to_model_input
from yolov2.engine.optim import build_sgd
from yolov2.engine.trainer import Hooks, LoopSettings, train
from yolov2.loss import region_loss
from yolov2.models import build_model


@pytest.mark.parametrize("threads", [1, 2])
def test_one_step_matches_the_plain_step(threads):
    torch.manual_seed(0)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = build_model("yolov2_tiny_voc", 3, width_multiplier=0.25)
        reference = copy.deepcopy(model)
        anchors = torch.tensor(model.default_anchors, dtype=torch.float32)
        images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
        targets = torch.tensor(
            [[[0, 0.5, 0.5, 0.4, 0.3], [2, 0.2, 0.7, 0.2, 0.2]], [[1, 0.6, 0.4, 0.5, 0.6], [-1, -1, -1, -1, -1]]]
        )
        batch = Batch(
            images, targets, ["a", "b"], torch.tensor([[64, 64], [64, 64]]), torch.zeros(2, dtype=torch.bool), 0
        )
        settings = LoopSettings(
            loop=LoopConfig(epochs=1, lr=0.01, burn_in=0),
            loss=LossConfig(),
            steps_per_epoch=1,
            accumulation=1,
            images_per_micro_batch=2,
            anchors=anchors,
            num_classes=3,
            amp="off",
            channels_last=False,
        )
        train(model, build_sgd(model, 0.01, 0.9, 0.0005), lambda epoch, first: [batch], settings, torch.device("cpu"))

        optimizer = build_sgd(reference, 0.01, 0.9, 0.0005)
        reference.train()
        output = reference(to_model_input(images))
        region_loss(output.float(), targets, anchors, 3, seen=2).total.backward()
        optimizer.step()
        for (name, got), want in zip(model.state_dict().items(), reference.state_dict().values()):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)
        assert torch.get_num_threads() == threads  # the loss's single thread is given back
    finally:
        torch.set_num_threads(previous)


def test_every_optimizer_step_reports_its_progress():
    """Hooks.step_end gets each optimizer step: its number, epoch, images over all ranks and loss."""
    torch.manual_seed(0)
    model = build_model("yolov2_tiny_voc", 3, width_multiplier=0.25)
    anchors = torch.tensor(model.default_anchors, dtype=torch.float32)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    targets = torch.tensor([[[0, 0.5, 0.5, 0.4, 0.3]], [[1, 0.6, 0.4, 0.5, 0.6]]])
    batch = Batch(images, targets, ["a", "b"], torch.tensor([[64, 64], [64, 64]]), torch.zeros(2, dtype=torch.bool), 0)
    settings = LoopSettings(
        loop=LoopConfig(epochs=2, lr=0.01, burn_in=0, log_every=2),
        loss=LossConfig(),
        steps_per_epoch=2,
        accumulation=2,
        images_per_micro_batch=4,
        anchors=anchors,
        num_classes=3,
        amp="off",
        channels_last=False,
    )
    reports, logged = [], []
    train(
        model,
        build_sgd(model, 0.01, 0.9, 0.0005),
        lambda epoch, first: [batch] * 4,
        settings,
        torch.device("cpu"),
        Hooks(step_end=reports.append, log=lambda metrics, step: logged.append((step, metrics.get("loss/total")))),
    )
    assert [(r.step, r.epoch, r.images) for r in reports] == [(1, 0, 8), (2, 0, 8), (3, 1, 8), (4, 1, 8)]
    assert all(r.seconds > 0 and 0 <= r.data_wait <= r.seconds and r.loss > 0 for r in reports)
    # a step's loss is the mean of its micro-batches: two steps average to the loss logged for their window
    assert [s for s, _ in logged] == [2, 4]
    for (_step, window_loss), pair in zip(logged, (reports[:2], reports[2:])):
        assert window_loss == pytest.approx((pair[0].loss + pair[1].loss) / 2, rel=1e-6)
