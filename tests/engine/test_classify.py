"""yolov2/engine/classify.py: the classifier's epoch, its validation counts and its schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from yolov2.engine.classify import EpochTotals, PhaseSchedule, train_classifier_epoch, validate_classifier


def _separable(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Three classes told apart by which channel is bright: batches of 8 images 3x8x8."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    images = torch.rand(n, 3, 8, 8, generator=g) * 0.2
    images[torch.arange(n), labels] += 0.8
    return [(images[i : i + 8], labels[i : i + 8]) for i in range(0, n, 8)]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())  # linear: separable


def test_training_epochs_learn_a_separable_problem_at_the_schedules_rates():
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    train, val = _separable(160, 0), _separable(64, 1)
    schedule = PhaseSchedule(lr=0.5, burn_in=5, power=4.0, total_steps=4 * 20)
    seen_rates, steps = [], 0
    before = validate_classifier(model, val, 3, torch.device("cpu"), "off")
    for epoch in range(4):
        rates = []
        totals, done = train_classifier_epoch(
            model,
            optimizer,
            _record_lr(train, optimizer, rates),
            schedule,
            steps,
            torch.device("cpu"),
            "off",
            epoch=epoch,
        )
        assert done == 20 and totals.samples == 160
        steps += done
        seen_rates.extend(rates)
    after = validate_classifier(model, val, 3, torch.device("cpu"), "off")
    assert seen_rates == pytest.approx([schedule.lr_at(s) for s in range(80)])
    assert after.metrics("")["top1"] > 0.9 > before.metrics("")["top1"]
    assert after.loss_sum < before.loss_sum


def _record_lr(batches, optimizer, rates):
    for batch in batches:
        yield batch
        rates.append(optimizer.param_groups[0]["lr"])  # set by the loop before the step that took this batch


def test_validation_counts_agree_with_a_plain_loop():
    model = _model()
    val = _separable(40, 2)
    totals = validate_classifier(model, val, 3, torch.device("cpu"), "off")
    images = torch.cat([b[0] for b in val])
    labels = torch.cat([b[1] for b in val])
    with torch.no_grad():
        logits = model(images)
    predicted = logits.argmax(1)
    expected = np.zeros((3, 3), np.int64)
    for t, p in zip(labels.tolist(), predicted.tolist()):
        expected[t, p] += 1
    assert (totals.confusion == expected).all()
    assert totals.correct == {1: int((predicted == labels).sum())}  # top-5 of 3 classes says nothing: left out
    loss = float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
    assert totals.loss_sum == pytest.approx(loss, rel=1e-5) and totals.samples == 40


def test_totals_survive_the_all_reduce_tensor():
    totals = EpochTotals(12, 3.5, {1: 7, 5: 11}, np.arange(36).reshape(6, 6))
    back = EpochTotals.from_tensor(totals.as_tensor() * 2, 6, True)
    assert back.samples == 24 and back.loss_sum == 7.0 and back.correct == {1: 14, 5: 22}
    assert (back.confusion == 2 * np.arange(36).reshape(6, 6)).all()
    assert EpochTotals.from_tensor(EpochTotals(3, 1.0, {1: 2}).as_tensor(), 4, False).correct == {1: 2}
