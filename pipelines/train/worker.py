"""One Ray Train worker: builds the model and its data, trains with :func:`yolov2.engine.trainer.train`.

Each worker reads its share of the training shards (split by rank and DataLoader worker, every sample once
per epoch) and reports a checkpoint through ``ray.train.report`` at the end of every ``checkpoint_every``
epochs (model, optimizer, EMA, step, ``seen``, RNG state, the results rows so far). Every rank validates its
share of the val split (:mod:`pipelines.train.validation`); rank 0 scores it (VOC07 and VOC12 mAP@0.5, COCO
AP and AP50), logs to MLflow (buffered while the server is unreachable,
:class:`~pipelines.tracking.RankZeroLogger`), keeps ``best.pt`` (the best VOC07 mAP@0.5 on val) and writes
the per-epoch results table (:mod:`pipelines.train.results`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch

from pipelines import faults, tracking
from pipelines.train.checkpoints import BEST_BY, BEST_FILE, STATE_FILE, model_file_bytes, resume_state
from pipelines.train.ingest import ray_data_batches, webdataset_batches
from pipelines.train.job import TrainJob, accumulation_for, validation_predict
from pipelines.train.results import write_results
from pipelines.train.validation import gather_predictions
from pipelines.workspace import Workspace
from yolov2.data.batch import Batch
from yolov2.data.shards import ShardSpec, shard_specs_from_index
from yolov2.engine.checkpoint import unwrap
from yolov2.engine.ema import ModelEMA
from yolov2.engine.init import freeze_darknet_layers, load_initial_weights
from yolov2.engine.optim import build_optimizer
from yolov2.engine.precision import Precision, choose_precision, detect_hardware, slow_path_warnings
from yolov2.engine.progress import Ticker, TrainProgress
from yolov2.engine.trainer import Hooks, LoopSettings, steps_per_epoch, train
from yolov2.evaluation import validation_metrics
from yolov2.hierarchy import TreeTensors

log = logging.getLogger(__name__)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker``; ``config`` is :meth:`TrainJob.as_loop_config`."""
    job = TrainJob.from_loop_config(config)
    t = job.train
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, t.cpus_per_worker))
    torch.manual_seed(t.seed)
    device = ray.train.torch.get_device()
    workspace = Workspace(job.workspace_uri)
    spec = job.spec
    hardware = detect_hardware(device)
    precision = choose_precision(hardware, t.amp, t.channels_last)

    model, optimizer, ema = _model_and_optimizer(job, precision)

    accumulation = accumulation_for(t.effective_batch, t.batch_size, world)
    if t.ingest == "ray_data":
        batches, micro_batches = ray_data_batches(t, job.train_total, world, accumulation)
    else:
        batches, micro_batches = webdataset_batches(
            t, workspace, job.shard_dir, job.train_index, world, rank, accumulation, job.class_only_index
        )
    trace_dir = job.faults.train_trace_dir

    def batches_for_epoch(epoch: int, first_micro: int) -> Iterable[Batch]:
        loader = batches(epoch, first_micro)
        if trace_dir:
            loader = _traced(loader, trace_dir, rank, epoch)
        if job.faults.train_step is not None:
            loader = _failing_at_step(loader, job.faults, rank, first_micro, accumulation)
        return loader

    settings = _loop_settings(job, precision, micro_batches, accumulation, world)
    resume_from = _resume_point(workspace, job, rank, world)

    logger = tracking.RankZeroLogger(
        job.tracking_uri,
        job.run_id,
        rank,
        settings.total_steps,
        workspace,
        job.output_dir,
        job.flush_timeout,
        console_lines=job.console_lines,
    )
    logger.precision(precision, hardware, slow_path_warnings(hardware, t.amp, t.channels_last, "train"))
    start_step = resume_from["state"]["step"] if resume_from else 0
    progress = (
        TrainProgress(
            settings.total_steps, t.loop.epochs, t.loop.log_every, start_step=start_step, emit=tracking.console
        )
        if rank == 0 and job.console_lines
        else None
    )
    val_shards = _val_shards(workspace, job) if job.val_index else None
    predict = validation_predict(t, job.evaluate)

    def validate(eval_model: torch.nn.Module, state) -> dict[str, float]:
        """Every rank predicts its share; the metrics on rank 0 ({} on the others)."""
        if val_shards is None:
            return {}
        gathered = gather_predictions(
            eval_model, spec, val_shards, predict, job.evaluate.batch_size, precision, rank, world
        )
        if gathered is None:
            return {}
        detections, records = gathered
        return validation_metrics(records, detections, spec.class_names, job.evaluate.coco_backend)

    def end_epoch(state, metrics: dict[str, float], ckpt: dict[str, Any] | None) -> None:
        """best.pt: the epoch with the best VOC07 mAP@0.5 on the val split (never a test metric)."""
        if rank == 0 and BEST_BY in metrics and metrics[BEST_BY] > state.best_metric:
            state.best_metric, state.best_epoch = metrics[BEST_BY], state.epoch
            best = ema.module if ema else unwrap(model)
            workspace.write_bytes(model_file_bytes(best, spec), job.output_dir, BEST_FILE)
            if ckpt is not None:
                ckpt["state"].update(best_metric=state.best_metric, best_epoch=state.best_epoch)
        if rank == 0:
            write_results(workspace, job.output_dir, state.results)
        if ckpt is not None:
            ckpt["precision"] = {
                "amp": precision.amp,
                "channels_last": precision.channels_last,
                "reason": precision.reason,
                "hardware": hardware.describe(),
            }
        logger.log(metrics, state.step)
        report = {
            **metrics,
            "step": state.step,
            "epoch": state.epoch,
            "seen": state.seen,
            "training_done": settings.finished(state),  # a search tells a finished trial from a stopped one
            "node_id": ray.get_runtime_context().get_node_id(),  # the node rank 0 ran on
            "world_size": world,  # a search's trial may train on several workers (DDP inside the trial)
        }
        if ckpt is not None and rank == 0:
            with tempfile.TemporaryDirectory() as folder:
                torch.save(ckpt, Path(folder) / STATE_FILE)
                ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(report)

    hooks = Hooks(
        log=logger.log, validate=validate, end_epoch=end_epoch, **({"step_end": progress.step_done} if progress else {})
    )
    with Ticker(progress.heartbeat) if progress else contextlib.nullcontext():
        final = train(model, optimizer, batches_for_epoch, settings, device, hooks, ema=ema, resume_from=resume_from)
    logger.close(final.step)
    if trace_dir:
        inner = unwrap(model)
        # parameters only: BN running statistics are per-rank between DDP's buffer broadcasts
        digest = hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in inner.parameters()))
        (Path(trace_dir) / f"weights-rank{rank}.txt").write_text(digest.hexdigest())


def _model_and_optimizer(
    job: TrainJob, precision: Precision
) -> tuple[torch.nn.Module, torch.optim.Optimizer, ModelEMA | None]:
    """The model (initial weights, frozen layers, memory format, wrapped by Ray Train in DDP), its optimizer
    and EMA, made in this order (the order of the draws from torch's seeded RNG)."""
    t = job.train
    model = job.spec.build()
    if t.init_weights:
        load_initial_weights(model, t.init_weights, t.init_layers)
    freeze_darknet_layers(model, t.freeze_backbone_layers)
    model = ray.train.torch.prepare_model(model.to(memory_format=precision.memory_format))
    optimizer = build_optimizer(model, t.optimizer, t.loop.lr, t.momentum, t.weight_decay)
    ema = ModelEMA(unwrap(model), t.ema_decay, ramp=t.ema_ramp) if t.ema else None
    return model, optimizer, ema


def _loop_settings(
    job: TrainJob, precision: Precision, micro_batches: int, accumulation: int, world: int
) -> LoopSettings:
    t, spec = job.train, job.spec
    return LoopSettings(
        loop=t.loop,
        loss=job.loss,
        steps_per_epoch=steps_per_epoch(micro_batches, accumulation),
        accumulation=accumulation,
        images_per_micro_batch=t.batch_size * world,
        anchors=torch.tensor(spec.anchors, dtype=torch.float32),
        num_classes=spec.num_classes,
        amp=precision.amp,
        channels_last=precision.channels_last,
        tree=TreeTensors.from_tree(tree) if (tree := spec.word_tree()) else None,
        class_nodes=torch.tensor(spec.tree_classes) if spec.tree_classes is not None else None,
    )


def _resume_point(workspace: Workspace, job: TrainJob, rank: int, world: int) -> dict[str, Any] | None:
    """The checkpoint this worker resumes from (Ray's restored one, or a newer one); None: from step 0."""
    resume_from = resume_state(workspace, job.checkpoint_dir, rank, world)
    if resume_from is not None:
        log.info(
            "rank %d: resuming from epoch %d, step %d",
            rank,
            resume_from["state"]["epoch"],
            resume_from["state"]["step"],
        )
    return resume_from


def _val_shards(workspace: Workspace, job: TrainJob) -> list[ShardSpec]:
    index = workspace.read_parquet(job.shard_dir, job.val_index)
    return shard_specs_from_index(index, workspace.uri_of(job.shard_dir))


def _traced(batches: Iterable[Batch], trace_dir: str, rank: int, epoch: int) -> Iterator[Batch]:
    """Test hook (``FaultPlan.train_trace_dir``): record each micro-batch's image ids and input size per rank."""
    with open(Path(trace_dir) / f"batches-rank{rank}.jsonl", "a") as f:
        for batch in batches:
            f.write(
                json.dumps(
                    {
                        "epoch": epoch,
                        "index": batch.index,
                        "size": int(batch.images.shape[-1]),
                        "ids": list(batch.image_ids),
                        "repeated": batch.repeated.tolist(),
                    }
                )
                + "\n"
            )
            f.flush()
            yield batch


def _failing_at_step(
    batches: Iterable[Batch], plan: faults.FaultPlan, rank: int, first_micro: int, accumulation: int
) -> Iterator[Batch]:
    """Fault hook (``FaultPlan.train_step``): the plan's rank fails once at that optimizer step.

    Steps count from 0 (``TrainState.step`` before the update). The failure comes as the step's last
    micro-batch is taken from the loader, so the update is never applied; a step the loop never completes
    (an incomplete accumulation at an epoch's end, past ``max_steps``) never fails. ``first_micro``: the
    micro-batches before this epoch's first, as the loop passes them to ``batches_for_epoch``.
    """
    for position, batch in enumerate(batches):
        done = first_micro + position + 1  # micro-batches done once this one is
        if done % accumulation == 0:
            faults.train_step_fault(plan, rank, done // accumulation - 1)
        yield batch
