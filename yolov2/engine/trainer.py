"""The training loop: one readable function, with AMP, channels_last, EMA and accumulation as small helpers.

It knows nothing of Ray or MLflow: the caller passes the data, the model (already wrapped in DDP when
distributed) and :class:`Hooks` (plain callables) for logging, validation, checkpoints and the end of an epoch.
``pipelines/train/worker.py`` supplies Ray Train's versions; tests can pass plain functions.

Units: a *micro-batch* is one forward/backward on one rank; an optimizer *step* happens every
``accumulation`` micro-batches (Darknet's ``subdivisions``), so the effective batch is
``batch_size * world_size * accumulation``. ``seen`` counts training images over all ranks (Darknet's
``net.seen``, which switches off the region loss's prior term at 12800).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from yolov2.config import LoopConfig, LossConfig
from yolov2.data.batch import Batch, to_model_input
from yolov2.engine.checkpoint import model_state_for_export, restore_rng_state, rng_state, unwrap
from yolov2.engine.ema import ModelEMA
from yolov2.engine.optim import cosine_lr, darknet_steps_lr, set_lr
from yolov2.engine.precision import Amp, autocast
from yolov2.engine.progress import StepReport
from yolov2.engine.results import EpochResult, epoch_result, results_from_state, results_to_state
from yolov2.hierarchy import TreeTensors, labels_to_nodes
from yolov2.loss import region_loss


@dataclass
class LoopSettings:
    """What the loop needs beyond model, optimizer and data: the configured loop and loss, and what the caller
    derives from the run (steps per epoch, accumulation, world size, the model's anchors and classes, the
    resolved precision)."""

    loop: LoopConfig  # length, learning-rate schedule, cadence
    loss: LossConfig
    steps_per_epoch: int  # optimizer steps per epoch
    accumulation: int
    images_per_micro_batch: int  # batch_size * world_size
    anchors: torch.Tensor  # (A, 2) grid cells
    num_classes: int
    amp: Amp  # resolved (yolov2.engine.precision.choose_precision): the loss is always float32
    channels_last: bool  # resolved
    tree: TreeTensors | None = None  # YOLO9000: the WordTree of the class scores (yolov2.hierarchy)
    class_nodes: torch.Tensor | None = None  # with a tree: the node of each dataset label (ModelSpec.tree_classes)

    @property
    def total_steps(self) -> int:
        total = self.loop.epochs * self.steps_per_epoch
        return min(total, self.loop.max_steps) if self.loop.max_steps else total

    def finished(self, state: TrainState) -> bool:
        """Whether the run is over after ``state``'s epoch: all epochs done, or ``max_steps`` reached."""
        return state.epoch >= self.loop.epochs or bool(self.loop.max_steps and state.step >= self.loop.max_steps)


@dataclass
class TrainState:
    """Where training is; all of it goes into a checkpoint."""

    epoch: int = 0  # the next epoch to run
    step: int = 0  # optimizer steps done
    seen: int = 0
    best_metric: float = -1.0  # the caller's (pipelines/train: VOC07 mAP@0.5 on the val split)
    best_epoch: int = 0  # the epoch (1-based) that reached best_metric; 0: none yet
    results: list[EpochResult] = field(default_factory=list)  # one row per finished epoch


@dataclass
class Hooks:
    """Callbacks; each defaults to doing nothing."""

    log: Callable[[dict[str, float], int], None] = lambda metrics, step: None
    validate: Callable[[nn.Module, TrainState], dict[str, float]] = lambda model, state: {}
    end_epoch: Callable[[TrainState, dict[str, float], dict[str, Any] | None], None] = lambda state, metrics, ckpt: None
    step_end: Callable[[StepReport], None] = lambda report: None  # after every optimizer step: progress lines


LOSS_PARTS = ("total", "coord", "obj", "noobj", "prior", "cls")


def _loss_values(losses) -> list[float]:
    """The logged loss parts as floats with one device-to-host copy (one sync per step on a GPU, not six)."""
    return torch.stack([getattr(losses, name).detach() for name in LOSS_PARTS]).tolist()


def learning_rate(settings: LoopSettings, step: int) -> float:
    loop = settings.loop
    if loop.schedule == "cosine":
        return cosine_lr(step, loop.lr, loop.warmup, settings.total_steps)
    return darknet_steps_lr(step, loop.lr, loop.burn_in, loop.steps, loop.scales)


@contextlib.contextmanager
def small_ops_threads(device: torch.device) -> Iterator[None]:
    """One intra-op thread on CPU for the region loss's forward and backward: hundreds of ops on tensors of a
    few thousand elements, where thread hand-offs cost more than they save. Measured on the 2-core machine under
    load: 64 ms of CPU with two threads, 4.5 ms with one (``benchmarks/train.py``). No effect on other devices."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def checkpoint_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: ModelEMA | None,
    scaler: torch.amp.GradScaler | None,
    state: TrainState,
) -> dict[str, Any]:
    """Everything to resume exactly, as weights_only-loadable values."""
    return {
        "model": model_state_for_export(model),
        "optimizer": optimizer.state_dict(),
        "ema": ema.state_dict() if ema else None,
        "scaler": scaler.state_dict() if scaler else None,
        "state": {
            "epoch": state.epoch,
            "step": state.step,
            "seen": state.seen,
            "best_metric": state.best_metric,
            "best_epoch": state.best_epoch,
        },
        "results": results_to_state(state.results),
        "rng": rng_state(),
    }


def restore(
    checkpoint: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: ModelEMA | None,
    scaler: torch.amp.GradScaler | None,
) -> TrainState:
    unwrap(model).load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    if ema is not None and checkpoint.get("ema"):
        ema.load_state_dict(checkpoint["ema"])
    if scaler is not None and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    restore_rng_state(checkpoint["rng"])
    return TrainState(**checkpoint["state"], results=results_from_state(checkpoint.get("results", [])))


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches_for_epoch: Callable[[int, int], Iterable[Batch]],
    settings: LoopSettings,
    device: torch.device,
    hooks: Hooks | None = None,
    ema: ModelEMA | None = None,
    resume_from: dict[str, Any] | None = None,
) -> TrainState:
    """Train until ``settings.loop.epochs`` or ``max_steps``; returns the final state.

    ``batches_for_epoch(epoch, first_micro_batch)`` yields the :class:`Batch` es of this rank for that epoch
    (it sets the loader's epoch and multi-scale offset). ``resume_from``: a checkpoint dict from
    :func:`checkpoint_state`; training continues at its ``epoch`` with the same step count and RNG state.
    ``hooks``: None does nothing at each hook. Each finished epoch appends its row of the results table
    (:func:`~yolov2.engine.results.epoch_result`) to ``state.results`` before its checkpoint, which carries them.
    """
    hooks = hooks or Hooks()
    loop = settings.loop
    scaler = torch.amp.GradScaler(device.type) if settings.amp == "fp16" else None
    state = restore(resume_from, model, optimizer, ema, scaler) if resume_from else TrainState()
    anchors = settings.anchors.to(device)
    tree = settings.tree.to(device) if settings.tree is not None else None  # once, not at every step
    class_nodes = settings.class_nodes.to(device) if settings.class_nodes is not None else None
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    while state.epoch < loop.epochs and (not loop.max_steps or state.step < loop.max_steps):
        model.train()
        first_micro = state.step * settings.accumulation
        epoch_start, epoch_seen, epoch_micro = time.perf_counter(), state.seen, 0
        epoch_totals = dict.fromkeys(LOSS_PARTS, 0.0)
        lr = learning_rate(settings, state.step)  # the epoch's last step's, for its results row
        totals: dict[str, float] = {}
        window_start, data_wait, images_in_window, micro = time.perf_counter(), 0.0, 0, 0
        step_start, step_wait, step_loss = window_start, 0.0, 0.0
        wait_start = time.perf_counter()
        for batch in batches_for_epoch(state.epoch, first_micro):
            waited = time.perf_counter() - wait_start
            data_wait += waited
            step_wait += waited
            images = to_model_input(batch.images, device, torch.float32, batch.color).contiguous(
                memory_format=memory_format
            )
            with autocast(settings.amp, device):
                output = model(images)
            seen_after = state.seen + settings.images_per_micro_batch
            head = output.detach().float().requires_grad_(True)  # the loss and its backward, on their own
            with small_ops_threads(device):
                losses = region_loss(
                    head,
                    labels_to_nodes(batch.targets.to(device), class_nodes),
                    anchors,
                    settings.num_classes,
                    seen_after,
                    settings.loss,
                    tree=tree,
                    class_only=batch.class_only,
                )
                scaled = losses.total / settings.accumulation
                (scaler.scale(scaled) if scaler else scaled).backward()
            output.backward(head.grad.to(output.dtype))
            state.seen = seen_after
            micro += 1
            images_in_window += len(batch.image_ids)
            loss_values = _loss_values(losses)
            step_loss += loss_values[0]
            for name, value in zip(LOSS_PARTS, loss_values):
                totals[name] = totals.get(name, 0.0) + value
                epoch_totals[name] += value
            epoch_micro += 1
            if micro % settings.accumulation == 0:
                lr = learning_rate(settings, state.step)
                set_lr(optimizer, lr)
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update(model)
                state.step += 1
                step_end = time.perf_counter()
                hooks.step_end(
                    StepReport(
                        step=state.step,
                        epoch=state.epoch,
                        images=settings.images_per_micro_batch * settings.accumulation,
                        seconds=step_end - step_start,
                        data_wait=step_wait,
                        loss=step_loss / settings.accumulation,
                    )
                )
                step_start, step_wait, step_loss = step_end, 0.0, 0.0
                if state.step % loop.log_every == 0:
                    elapsed = time.perf_counter() - window_start
                    window = {f"loss/{k}": v / micro for k, v in totals.items()}
                    window.update(
                        {
                            "lr": lr,
                            "input_size": float(images.shape[-1]),
                            "seen": float(state.seen),
                            "images_per_s": images_in_window / max(elapsed, 1e-9),
                            "data_wait_fraction": data_wait / max(elapsed, 1e-9),
                        }
                    )
                    hooks.log(window, state.step)
                    totals, micro, images_in_window, data_wait = {}, 0, 0, 0.0
                    window_start = time.perf_counter()
                if loop.max_steps and state.step >= loop.max_steps:
                    break
            wait_start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)  # drop an incomplete accumulation at the epoch's end
        train_seconds = time.perf_counter() - epoch_start
        state.epoch += 1
        finished = settings.finished(state)
        metrics: dict[str, float] = {"epoch": float(state.epoch), "step": float(state.step)}
        validation: dict[str, float] = {}
        if state.epoch % loop.val_every == 0 or finished:
            validation = hooks.validate(ema.module if ema else unwrap(model), state)
            metrics.update(validation)
        state.results.append(
            epoch_result(
                epoch=state.epoch,
                step=state.step,
                losses={name: total / max(epoch_micro, 1) for name, total in epoch_totals.items()},
                lr=lr,
                metrics=validation,
                images=state.seen - epoch_seen,
                train_seconds=train_seconds,
                epoch_seconds=time.perf_counter() - epoch_start,
                previous=state.results[-1] if state.results else None,
            )
        )
        ckpt = None
        if state.epoch % loop.checkpoint_every == 0 or finished:
            ckpt = checkpoint_state(model, optimizer, ema, scaler, state)
        hooks.end_epoch(state, metrics, ckpt)
    return state


def steps_per_epoch(micro_batches_per_epoch: int, accumulation: int) -> int:
    """Optimizer steps an epoch gives (an incomplete accumulation at the end is dropped)."""
    return max(1, math.floor(micro_batches_per_epoch / accumulation))
