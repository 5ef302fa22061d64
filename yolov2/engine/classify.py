"""Training and validating a classifier, one epoch at a time: the backbone pretraining's loop.

Darknet's classifier recipe: SGD with momentum and weight decay, the poly learning rate with its burn-in
(:func:`yolov2.engine.optim.darknet_poly_lr`) over each phase's steps, softmax cross-entropy. Like
:mod:`yolov2.engine.trainer` it knows nothing of Ray or MLflow: the caller passes the batches, the model (in DDP
when distributed) and a callback per step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from yolov2.engine.optim import darknet_poly_lr, set_lr
from yolov2.engine.precision import Amp, autocast
from yolov2.engine.progress import StepReport
from yolov2.metrics.classification import class_confusion_matrix, topk_correct

TOP_K = (1, 5)


@dataclass(frozen=True)
class PhaseSchedule:
    """A phase's learning rate: Darknet's poly policy with burn-in over ``total_steps`` optimizer steps."""

    lr: float
    burn_in: int
    power: float
    total_steps: int

    def lr_at(self, step: int) -> float:
        return darknet_poly_lr(step, self.lr, self.burn_in, self.total_steps, self.power)


@dataclass
class EpochTotals:
    """Sums over an epoch's samples on this rank (add them over ranks, then divide): the loss and the top-k
    hits, and for validation the confusion matrix."""

    samples: int
    loss_sum: float
    correct: dict[int, int]
    confusion: np.ndarray | None = None

    def as_tensor(self) -> torch.Tensor:
        """The counts as one float64 tensor (for one all-reduce over the ranks)."""
        extra = self.confusion.ravel() if self.confusion is not None else np.zeros(0)
        head = [self.samples, self.loss_sum, *(self.correct.get(k, 0) for k in TOP_K)]
        return torch.tensor(np.concatenate([np.asarray(head, np.float64), extra]), dtype=torch.float64)

    @classmethod
    def from_tensor(cls, values: torch.Tensor, num_classes: int, with_confusion: bool) -> EpochTotals:
        v = values.tolist()
        confusion = (
            np.asarray(v[2 + len(TOP_K) :], np.float64).round().astype(np.int64).reshape(num_classes, num_classes)
            if with_confusion
            else None
        )
        correct = {k: int(round(v[2 + i])) for i, k in enumerate(TOP_K) if k in _ks(num_classes)}
        return cls(int(round(v[0])), v[1], correct, confusion)

    def metrics(self, prefix: str) -> dict[str, float]:
        """Mean loss and top-k accuracy; a k at or above the class count is left out (it is always 1)."""
        n = max(self.samples, 1)
        out = {f"{prefix}loss": self.loss_sum / n}
        out.update({f"{prefix}top{k}": hits / n for k, hits in self.correct.items()})
        return out


def train_classifier_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    schedule: PhaseSchedule,
    first_step: int,
    device: torch.device,
    amp: Amp,
    *,
    epoch: int,
    world_size: int = 1,
    step_end: Callable[[StepReport], None] = lambda report: None,
) -> tuple[EpochTotals, int]:
    """One epoch: a step per batch at the schedule's rate for ``first_step`` onwards; ``(totals, steps done)``."""
    model.train()
    totals = EpochTotals(0, 0.0, {})  # the k below the class count (topk_correct leaves the others out)
    step = first_step
    waited_from = time.perf_counter()
    for images, labels in batches:
        started = time.perf_counter()
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        set_lr(optimizer, schedule.lr_at(step))
        with autocast(amp, device):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        n, value = len(labels), loss.item()  # one device-to-host copy per step
        totals.samples += n
        totals.loss_sum += value * n
        for k, hits in topk_correct(logits.detach().float(), labels, TOP_K).items():
            totals.correct[k] = totals.correct.get(k, 0) + hits
        now = time.perf_counter()
        step_end(StepReport(step, epoch, n * world_size, now - waited_from, started - waited_from, value))
        waited_from = now
    return totals, step - first_step


@torch.no_grad()
def validate_classifier(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    device: torch.device,
    amp: Amp,
) -> EpochTotals:
    """Loss, top-k hits and the confusion matrix (rows: true class) over the batches, in eval mode."""
    was_training = model.training
    model.eval()
    totals = EpochTotals(0, 0.0, {k: 0 for k in _ks(num_classes)}, np.zeros((num_classes, num_classes), np.int64))
    for images, labels in batches:
        images, labels = images.to(device), labels.to(device)
        with autocast(amp, device):
            logits = model(images).float()
        totals.samples += len(labels)
        totals.loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        for k, hits in topk_correct(logits, labels, _ks(num_classes)).items():
            totals.correct[k] += hits
        assert totals.confusion is not None
        totals.confusion += class_confusion_matrix(labels.cpu().numpy(), logits.argmax(1).cpu().numpy(), num_classes)
    model.train(was_training)
    return totals


def _ks(num_classes: int) -> tuple[int, ...]:
    """The top-k accuracies that say something: k below the number of classes (top-5 of 5 classes is 1)."""
    return tuple(k for k in TOP_K if k < num_classes) or (1,)
