"""The worker's fault hook on the real training loop (no Ray): the plan's rank fails once at the planned
optimizer step (counted from 0), before that step's update and after the checkpoints before it; a step the
loop drops at an epoch's end is not that step. Also: the job travels typed through ``train_loop_config``."""

from __future__ import annotations

import pytest
import torch

from pipelines.faults import NO_FAULTS, FaultPlan
from pipelines.train.job import TrainJob
from pipelines.train.worker import _failing_at_step
from yolov2.config import LoopConfig, LossConfig
from yolov2.data.batch import Batch
from yolov2.engine.trainer import Hooks, LoopSettings, train


class TinyHead(torch.nn.Module):
    """(B, 3, 32, 32) -> (B, 1 * (5 + 2), 1, 1): one anchor, two classes; enough for the region loss."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 7, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _batches(count: int) -> list[Batch]:
    return [
        Batch(
            images=torch.zeros(2, 3, 32, 32, dtype=torch.uint8),
            targets=torch.full((2, 1, 5), -1.0),
            image_ids=[f"{i}a", f"{i}b"],
            orig_sizes=torch.full((2, 2), 32),
            repeated=torch.zeros(2, dtype=bool),
            index=i,
        )
        for i in range(count)
    ]


def _run(plan: FaultPlan, micro_batches: int, accumulation: int, epochs: int, events: list[str]) -> int:
    """Train on rank 0 with the fault hook; ``events`` gets "step N" after each update and "epoch end at
    N" at each epoch's end (where the checkpoint is reported). Returns the final step."""
    torch.manual_seed(0)
    model = TinyHead()
    settings = LoopSettings(
        loop=LoopConfig(epochs=epochs, burn_in=0, log_every=1),
        loss=LossConfig(),
        steps_per_epoch=max(1, micro_batches // accumulation),
        accumulation=accumulation,
        images_per_micro_batch=2,
        anchors=torch.tensor([[1.0, 1.0]]),
        num_classes=2,
        amp="off",
        channels_last=False,
    )

    def batches_for_epoch(epoch: int, first_micro: int):
        return _failing_at_step(_batches(micro_batches), plan, 0, first_micro, accumulation)

    hooks = Hooks(
        step_end=lambda report: events.append(f"step {report.step}"),
        end_epoch=lambda state, metrics, ckpt: events.append(f"epoch end at {state.step}"),
    )
    final = train(
        model, torch.optim.SGD(model.parameters(), lr=0.01), batches_for_epoch, settings, torch.device("cpu"), hooks
    )
    return final.step


@pytest.mark.parametrize("accumulation", [1, 2])
def test_the_planned_rank_fails_once_before_the_planned_steps_update(tmp_path, accumulation):
    plan = FaultPlan(train_step=3, train_marker_dir=str(tmp_path))
    events: list[str] = []
    with pytest.raises(RuntimeError, match="injected training failure at step 3"):
        _run(plan, micro_batches=2 * accumulation, accumulation=accumulation, epochs=3, events=events)
    # steps 0-2 applied (TrainState.step 1-3), epoch 0's checkpoint at 2, then step 3 fails before its update
    assert events == ["step 1", "step 2", "epoch end at 2", "step 3"]
    assert (tmp_path / "train-step-3.failed").read_text().startswith("rank 0 ")
    events.clear()  # the retry: the marker is there, so it does not fail again
    assert _run(plan, micro_batches=2 * accumulation, accumulation=accumulation, epochs=3, events=events) == 6
    assert events == [
        "step 1",
        "step 2",
        "epoch end at 2",
        "step 3",
        "step 4",
        "epoch end at 4",
        "step 5",
        "step 6",
        "epoch end at 6",
    ]


def test_a_step_the_epochs_end_drops_is_not_the_planned_step(tmp_path):
    """5 micro-batches, 2 per step: the 5th would start step 2, but the epoch's end drops it; step 2 is
    epoch 1's first, and fails there, after epoch 0's checkpoint."""
    plan = FaultPlan(train_step=2, train_marker_dir=str(tmp_path))
    events: list[str] = []
    with pytest.raises(RuntimeError, match="injected training failure at step 2"):
        _run(plan, micro_batches=5, accumulation=2, epochs=2, events=events)
    assert events == ["step 1", "step 2", "epoch end at 2"]


def test_no_failure_on_another_rank_or_without_a_plan(tmp_path):
    for plan in (FaultPlan(train_step=1, train_rank=1, train_marker_dir=str(tmp_path)), NO_FAULTS):
        events: list[str] = []
        assert _run(plan, micro_batches=4, accumulation=2, epochs=2, events=events) == 4
        assert events == ["step 1", "step 2", "epoch end at 2", "step 3", "step 4", "epoch end at 4"]
    assert list(tmp_path.iterdir()) == []


def test_the_job_travels_as_train_loop_config():
    with pytest.raises(TypeError, match="expected a TrainJob"):
        TrainJob.from_loop_config({"job": {"workspace_uri": "/tmp"}})
