"""One Ray Train worker of the pretrain stage: the classifier's two phases, epoch by epoch.

Each rank trains on its share of the classification shards (:func:`yolov2.data.cls_stream.class_batches`) with
:func:`yolov2.engine.classify.train_classifier_epoch`, validates its share of the val split, and the ranks add
their counts (one all-reduce), so rank 0 logs the whole split's loss, top-1, top-5 and confusion matrix. Every
epoch ends with a checkpoint through ``ray.train.report`` (model, optimizer, epoch, the phase's step, the
results so far): ``FailureConfig`` restarts failed workers from it. A phase starts with a fresh optimizer at the
phase's learning rate, as Darknet's 448 fine-tune starts from the 224 weights alone.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from pipelines import faults, tracking
from pipelines.config import ClassifierPhase, PretrainConfig
from pipelines.faults import NO_FAULTS, FaultPlan
from pipelines.train.checkpoints import STATE_FILE, resume_state
from pipelines.workspace import Workspace
from yolov2.data.classify_transforms import ClassifierAugment, classifier_train_transform, classifier_val_transform
from yolov2.data.cls_stream import class_batches, rank_samples
from yolov2.engine.checkpoint import unwrap
from yolov2.engine.classify import EpochTotals, PhaseSchedule, train_classifier_epoch, validate_classifier
from yolov2.engine.optim import build_sgd
from yolov2.engine.precision import choose_precision, detect_hardware, slow_path_warnings
from yolov2.engine.progress import StepReport, Ticker, TrainProgress
from yolov2.models.classifier import build_classifier

log = logging.getLogger(__name__)
PHASES = ("low", "high")


@dataclass(frozen=True)
class PretrainJob:
    """Everything a pretrain worker needs; paths are relative to the workspace root unless named ``uri``."""

    workspace_uri: str
    output_dir: str
    checkpoint_dir: str  # Ray Train's run folder: checkpoint_<time>/state.pt
    dataset: dict[str, Any]  # the dataset part of the manifest (class names, shards and counts per split)
    model_name: str  # the detector whose backbone is trained
    width_multiplier: float
    pretrain: PretrainConfig
    flush_timeout: float
    tracking_uri: str | None = None
    run_id: str | None = None
    faults: FaultPlan = NO_FAULTS
    console_lines: bool = True


def phase_of(pretrain: PretrainConfig, epoch: int) -> tuple[str, ClassifierPhase, int]:
    """The phase of global epoch ``epoch`` (0-based), and the epoch it starts at."""
    if epoch < pretrain.low.epochs:
        return "low", pretrain.low, 0
    return "high", pretrain.high, pretrain.low.epochs


def steps_per_epoch(dataset: dict[str, Any], batch_size: int, world: int) -> int:
    per_rank = rank_samples(dataset["splits"]["train"]["samples"], 0, world, train=True)
    return max(1, -(-per_rank // batch_size))


def pretrain_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker``; ``config`` is ``{"job": PretrainJob}``."""
    job: PretrainJob = config["job"]
    p = job.pretrain
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, p.cpus_per_worker))
    torch.manual_seed(p.seed)
    device = ray.train.torch.get_device()
    workspace = Workspace(job.workspace_uri)
    hardware = detect_hardware(device)
    precision = choose_precision(hardware, p.amp, False)
    names = job.dataset["class_names"]
    model = ray.train.torch.prepare_model(build_classifier(job.model_name, len(names), job.width_multiplier))
    per_epoch = steps_per_epoch(job.dataset, p.batch_size, world)
    total_epochs = p.low.epochs + p.high.epochs
    state = _resume(workspace, job, rank, world)
    if state is not None:
        unwrap(model).load_state_dict(state["model"])
    epoch = state["state"]["epoch"] if state else 0
    results: list[dict[str, Any]] = state["results"] if state else []
    optimizer = None
    logger = tracking.RankZeroLogger(
        job.tracking_uri,
        job.run_id,
        rank,
        total_epochs * per_epoch,
        workspace,
        job.output_dir,
        job.flush_timeout,
        console_lines=job.console_lines,
        label="pretrain",
    )
    logger.precision(precision, hardware, slow_path_warnings(hardware, p.amp, False, "pretrain"))
    progress = (
        TrainProgress(
            total_epochs * per_epoch,
            total_epochs,
            p.log_every,
            start_step=epoch * per_epoch,
            emit=tracking.console,
            label="pretrain",
        )
        if rank == 0 and job.console_lines
        else None
    )
    urls = {
        s: [workspace.uri_of(job.output_dir, n) for n in job.dataset["splits"][s]["shards"]] for s in ("train", "val")
    }
    with Ticker(progress.heartbeat) if progress else contextlib.nullcontext():
        while epoch < total_epochs:
            name, phase, start = phase_of(p, epoch)
            if optimizer is None or epoch == start:
                optimizer = build_sgd(model, phase.lr, p.momentum, p.weight_decay)
                if state is not None and state["state"]["epoch"] == epoch and epoch != start:
                    optimizer.load_state_dict(state["optimizer"])
            schedule = PhaseSchedule(phase.lr, phase.burn_in, phase.power, phase.epochs * per_epoch)
            augment = ClassifierAugment(
                phase.size, phase.min_crop, phase.max_crop, p.angle, p.aspect, p.hue, p.saturation, p.exposure
            )
            batches = class_batches(
                urls["train"],
                job.dataset["splits"]["train"]["samples"],
                partial(_train_image, augment),
                p.batch_size,
                rank,
                world,
                train=True,
                seed=p.seed,
                epoch=epoch,
            )
            batches = _failing_at_step(batches, job.faults, rank, epoch * per_epoch)
            step_end = _step_end(progress, logger, p.log_every, start * per_epoch)
            trained, _ = train_classifier_epoch(
                model,
                optimizer,
                batches,
                schedule,
                (epoch - start) * per_epoch,
                device,
                precision.amp,
                epoch=epoch,
                world_size=world,
                step_end=step_end,
            )
            val_batches = class_batches(
                urls["val"],
                job.dataset["splits"]["val"]["samples"],
                partial(_val_image, phase.size),
                p.batch_size,
                rank,
                world,
                train=False,
                seed=p.seed,
                epoch=epoch,
            )
            validated = validate_classifier(unwrap(model), val_batches, len(names), device, precision.amp)
            trained, validated = _summed(trained, len(names), False), _summed(validated, len(names), True)
            epoch += 1
            row = {
                "epoch": epoch,
                "phase": name,
                "size": phase.size,
                "lr": schedule.lr_at((epoch - start) * per_epoch - 1),
            }
            row.update(trained.metrics("train_"))
            row.update(validated.metrics("val_"))
            results.append(row)
            logger.log(
                {**{f"{name}/{k}": v for k, v in row.items() if isinstance(v, float)}, "epoch": epoch},
                epoch * per_epoch,
            )
            _report(model, optimizer, epoch, epoch * per_epoch, results, validated, rank)
    logger.close(total_epochs * per_epoch)


def _train_image(augment: ClassifierAugment, image: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    return classifier_train_transform(image, augment, rng)


def _val_image(size: int, image: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    return classifier_val_transform(image, size)


def _summed(totals: EpochTotals, num_classes: int, with_confusion: bool) -> EpochTotals:
    """The totals added over all ranks (one all-reduce); as they are on one worker."""
    if not (dist.is_available() and dist.is_initialized()):
        return totals
    values = totals.as_tensor()
    dist.all_reduce(values)
    return EpochTotals.from_tensor(values, num_classes, with_confusion)


def _step_end(progress: TrainProgress | None, logger: tracking.RankZeroLogger, log_every: int, offset: int):
    """Per step: the progress line, and the loss to MLflow every ``log_every`` steps (at the global step)."""

    def step_end(report: StepReport) -> None:
        global_report = StepReport(
            report.step + offset, report.epoch, report.images, report.seconds, report.data_wait, report.loss
        )
        if progress is not None:
            progress.step_done(global_report)
        if global_report.step % max(1, log_every) == 0:
            logger.log({"step_loss": report.loss}, global_report.step)

    return step_end


def _report(
    model, optimizer, epoch: int, step: int, results: list[dict[str, Any]], validated: EpochTotals, rank: int
) -> None:
    """The epoch's checkpoint (rank 0 writes it; every rank reports) and metrics."""
    metrics = {k: v for k, v in results[-1].items() if isinstance(v, (int, float))}
    if rank != 0:
        ray.train.report(metrics)
        return
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "state": {"epoch": epoch, "step": step},  # the fields newest_checkpoint compares
        "results": results,
        "confusion": torch.from_numpy(validated.confusion) if validated.confusion is not None else None,
    }
    with tempfile.TemporaryDirectory() as folder:
        torch.save(state, Path(folder) / STATE_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _resume(workspace: Workspace, job: PretrainJob, rank: int, world: int) -> dict[str, Any] | None:
    """The checkpoint to continue from (Ray's restored one, or a newer one it had not registered); None."""
    state = resume_state(workspace, job.checkpoint_dir, rank, world)
    if state is not None:
        log.info("pretrain rank %d: resuming after epoch %d", rank, state["state"]["epoch"])
    return state


def _failing_at_step(batches, plan: FaultPlan, rank: int, first_step: int):
    """Fault hook (``FaultPlan.train_step``): the plan's rank fails once as it takes that step's batch."""
    for position, batch in enumerate(batches):
        faults.train_step_fault(plan, rank, first_step + position)
        yield batch
