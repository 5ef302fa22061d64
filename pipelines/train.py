"""The `train` stage: YOLOv2 on N Ray Train workers (gloo on CPU, NCCL on GPU), Darknet's recipe.

Each worker reads its share of the training shards (split by rank and DataLoader worker, every sample
once per epoch), trains with :func:`yolov2.engine.trainer.train`, and reports a checkpoint through
``ray.train.report`` at the end of every ``checkpoint_every`` epochs (model, optimizer, EMA, step, ``seen``,
RNG state). ``FailureConfig(max_failures)`` restarts failed workers from the last checkpoint; ``--resume``
continues a stopped run; a restart takes the newest complete checkpoint, also one Ray had not registered
when the worker died. Rank 0 logs to MLflow (into this stage's run; buffered while the server is
unreachable, see ``_RankZeroLogger``), validates (VOC07 mAP@0.5 on the val split) and keeps ``best.pt``.
At the end the driver writes ``model.pt`` (EMA weights when enabled), logs it with
``mlflow.pytorch.log_model`` and registers it.

Run alone: ``python pipelines/train.py --config configs/demo.yaml [--resume]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from yolov2.config import PipelineConfig, from_dict, to_dict
from yolov2.inference import ModelSpec, save_model_file

from pipelines import cli_common, tracking
from pipelines.stage import StageContext, StageResult, run_stage
from pipelines.workspace import Workspace

log = logging.getLogger(__name__)
STAGE = "train"
STATE_FILE = "state.pt"
DELIVERY_REPORT = "mlflow_delivery.json"  # rank 0's account of the metrics it sent to MLflow
UNSENT_METRICS = "mlflow_unsent_metrics.jsonl"  # metric values MLflow never took (server down to the end)
RUN_NAME = "run"  # Ray Train's run folder under <output>/ray


def accumulation_for(effective_batch: int, batch_size: int, world_size: int) -> int:
    """Micro-batches per optimizer step so that batch_size * world_size * accumulation ~ effective_batch."""
    return max(1, round(effective_batch / (batch_size * world_size)))


# ---------------------------------------------------------------------------------------------
# On each Ray Train worker
# ---------------------------------------------------------------------------------------------


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    from yolov2.engine.checkpoint import load_checkpoint, unwrap
    from yolov2.engine.ema import ModelEMA
    from yolov2.engine.optim import build_optimizer
    from yolov2.engine.precision import choose_precision, detect_hardware, slow_path_warnings
    from yolov2.engine.progress import TrainProgress, Ticker
    from yolov2.engine.trainer import Hooks, LoopSettings, steps_per_epoch, train
    from yolov2.loss import region_loss_kwargs

    cfg: PipelineConfig = from_dict(PipelineConfig, config["cfg"], "<train config>")
    t = cfg.train
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, t.cpus_per_worker))
    torch.manual_seed(t.seed)
    device = ray.train.torch.get_device()
    workspace = Workspace(config["workspace"])
    spec = ModelSpec(**config["spec"])
    hardware = detect_hardware(device)
    precision = choose_precision(hardware, t.amp, t.channels_last)

    model = spec.build()
    if t.init_weights:
        _load_initial_weights(model, t.init_weights, t.init_layers)
    _freeze_backbone(model, t.freeze_backbone_layers)
    model = ray.train.torch.prepare_model(model.to(memory_format=precision.memory_format))
    optimizer = build_optimizer(model, t.optimizer, t.lr, t.momentum, t.weight_decay)
    ema = ModelEMA(unwrap(model), t.ema_decay) if t.ema else None

    accumulation = accumulation_for(t.effective_batch, t.batch_size, world)
    if t.ingest == "ray_data":
        batches, micro_batches = _ray_data_batches(t, config["train_total"], world, accumulation)
    else:
        batches, micro_batches = _webdataset_batches(t, workspace, config, world, rank, accumulation)

    def batches_for_epoch(epoch: int, first_micro: int):
        loader = batches(epoch, first_micro)
        return _traced(loader, config.get("trace_dir"), rank, epoch) if config.get("trace_dir") else loader

    settings = LoopSettings(
        epochs=t.epochs, steps_per_epoch=steps_per_epoch(micro_batches, accumulation),
        accumulation=accumulation, images_per_micro_batch=t.batch_size * world,
        anchors=torch.tensor(spec.anchors, dtype=torch.float32), num_classes=spec.num_classes,
        loss_kwargs=region_loss_kwargs(cfg.loss), lr=t.lr, schedule=t.schedule, burn_in=t.burn_in,
        steps=tuple(t.steps), scales=tuple(t.scales), warmup=t.warmup, max_steps=t.max_steps, amp=precision.amp,
        channels_last=precision.channels_last, log_every=t.log_every, val_every=t.val_every,
        checkpoint_every=t.checkpoint_every,
    )
    restored = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            restored = load_checkpoint(Path(folder) / STATE_FILE)
    resume_from = _newest_checkpoint(workspace, config["checkpoint_dir"], restored, rank, world)
    if resume_from is not None:
        log.info("rank %d: resuming from epoch %d, step %d", rank, resume_from["state"]["epoch"],
                 resume_from["state"]["step"])

    logger = _RankZeroLogger(config.get("tracking_uri"), config.get("run_id"), rank, settings.total_steps,
                             workspace, config["output_dir"], cfg.mlflow.flush_timeout)
    logger.precision(precision, hardware, slow_path_warnings(hardware, t.amp, t.channels_last, "train"))
    start_step = resume_from["state"]["step"] if resume_from else 0
    progress = TrainProgress(settings.total_steps, settings.epochs, t.log_every, start_step=start_step,
                             emit=_console) if rank == 0 else None
    validator = (_Validator(cfg, workspace, config, spec, precision)
                 if rank == 0 and config.get("val_index") else None)

    def validate(eval_model: torch.nn.Module, state) -> dict[str, float]:
        return validator(eval_model) if validator else {}

    def end_epoch(state, metrics: dict[str, float], ckpt: dict[str, Any] | None) -> None:
        if rank == 0 and "map50_voc07" in metrics and metrics["map50_voc07"] > state.best_metric:
            state.best_metric = metrics["map50_voc07"]
            best = ema.module if ema else unwrap(model)
            workspace.write_bytes(_model_file_bytes(best, spec), config["output_dir"], "best.pt")
            if ckpt is not None:
                ckpt["state"]["best_metric"] = state.best_metric
        if ckpt is not None:
            ckpt["precision"] = {"amp": precision.amp, "channels_last": precision.channels_last,
                                 "reason": precision.reason, "hardware": hardware.describe()}
        logger.log(metrics, state.step)
        report = {**metrics, "step": state.step, "epoch": state.epoch, "seen": state.seen}
        if ckpt is not None and rank == 0:
            with tempfile.TemporaryDirectory() as folder:
                torch.save(ckpt, Path(folder) / STATE_FILE)
                ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(report)

    def before_step(state) -> None:
        _maybe_inject_fault(config.get("fault"), rank, state.step)

    hooks = Hooks(log=logger.log, validate=validate, end_epoch=end_epoch, before_step=before_step,
                  **({"step_end": progress.step_done} if progress else {}))
    with Ticker(progress.heartbeat) if progress else contextlib.nullcontext():
        final = train(model, optimizer, batches_for_epoch, settings, device, hooks, ema=ema, resume_from=resume_from)
    logger.close(final.step)
    if config.get("trace_dir"):
        inner = unwrap(model)
        # parameters only: BN running statistics are per-rank between DDP's buffer broadcasts
        digest = hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in inner.parameters()))
        (Path(config["trace_dir"]) / f"weights-rank{rank}.txt").write_text(digest.hexdigest())


def _webdataset_batches(t, workspace: Workspace, config: dict[str, Any], world: int, rank: int, accumulation: int):
    """Single-node ingest: this rank's part of the WebDataset shards through a DataLoader.

    Returns ``(batches(epoch, first_micro) -> iterable of Batch, micro-batches per epoch)``."""
    import pyarrow.parquet as pq

    from yolov2.data.loader import ShardStream, make_dataloader, shard_specs_from_index

    shard_dir = workspace.uri_of(config["shard_dir"])
    train_shards = shard_specs_from_index(pq.read_table(workspace.path(config["shard_dir"], config["train_index"]),
                                                       filesystem=workspace.fs), shard_dir)
    stream = ShardStream.from_config(train_shards, t, world, rank, accumulation=accumulation)
    loader = make_dataloader(stream, num_workers=t.loader_workers)

    def batches(epoch: int, first_micro: int):
        stream.set_epoch(epoch, first_micro)
        return loader

    return batches, stream.batches_per_epoch(t.loader_workers)


def _ray_data_batches(t, total: int, world: int, accumulation: int):
    """Cluster ingest: this rank's stream of the Ray Dataset the driver built (:func:`ray_data_train_dataset`),
    decoded and augmented by Ray Data's CPU tasks, each batch resized here to its multi-scale step's size.

    The split is Ray Train's ``streaming_split(equal=True)`` of a dataset padded to a multiple of ``world``, so
    every rank gets ``total / world`` rows, the same batch count, and each sample once per epoch."""
    import ray.train

    from yolov2.data.loader import MultiScaleSchedule, batches_per_epoch, iter_row_batches

    shard = ray.train.get_dataset_shard("train")
    schedule = MultiScaleSchedule.from_config(t)

    def batches(epoch: int, first_micro: int):
        def size_of(position: int) -> int:
            return schedule.size_at((first_micro + position) // accumulation) if schedule else t.input_size

        rows = shard.iter_batches(batch_size=t.batch_size, batch_format="numpy", drop_last=False,
                                  local_shuffle_buffer_size=4 * t.batch_size)
        return iter_row_batches(rows, size_of)

    return batches, batches_per_epoch(total, world, t.batch_size)


def _newest_checkpoint(workspace: Workspace, checkpoint_dir: str, restored: dict[str, Any] | None,
                       rank: int, world: int) -> dict[str, Any] | None:
    """The checkpoint to resume from: the one Ray restored, or a newer one it had not registered yet.

    Ray Train's controller registers a reported checkpoint a moment after the report; a worker killed in
    between (seen with SIGKILL) makes it restart from the checkpoint before, or from step 0. Our
    checkpoints are plain ``checkpoint_<time>/state.pt`` folders under the run's storage, so rank 0 picks
    the newest one that loads (a half-uploaded one does not) and every rank resumes from that same one.
    """
    import torch.distributed as dist

    choice: list[str | None] = [None]
    newer = None  # rank 0's loaded copy of the chosen checkpoint (the other ranks load it below)
    if rank == 0:
        restored_step = restored["state"]["step"] if restored else -1
        for name in reversed(workspace.list_dir(checkpoint_dir)):  # names sort by time
            if not name.startswith("checkpoint_"):
                continue
            try:
                state = _load_state(workspace, checkpoint_dir, name)
            except Exception as e:  # FileNotFoundError, a truncated file: an upload the kill interrupted
                log.warning("skipping incomplete checkpoint %s/%s (%s)", checkpoint_dir, name, e)
                continue
            if state["state"]["step"] > restored_step:
                log.warning("Ray Train restored %s; resuming from the newer checkpoint %s (step %d) instead",
                            f"step {restored_step}" if restored else "no checkpoint", name, state["state"]["step"])
                choice, newer = [name], state
            break
    if world > 1 and dist.is_available() and dist.is_initialized():
        dist.broadcast_object_list(choice, src=0)
    if choice[0] is None:
        return restored
    return newer if newer is not None else _load_state(workspace, checkpoint_dir, choice[0])


def _load_state(workspace: Workspace, checkpoint_dir: str, name: str) -> dict[str, Any]:
    from yolov2.engine.checkpoint import load_checkpoint

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / STATE_FILE
        path.write_bytes(workspace.read_bytes(checkpoint_dir, name, STATE_FILE))
        return load_checkpoint(path)


def _traced(batches, trace_dir: str, rank: int, epoch: int):
    """Test hook (env YOLOV2_TRAIN_TRACE_DIR): record each micro-batch's image ids and input size per rank."""
    with open(Path(trace_dir) / f"batches-rank{rank}.jsonl", "a") as f:
        for batch in batches:
            f.write(json.dumps({"epoch": epoch, "index": batch.index, "size": int(batch.images.shape[-1]),
                                "ids": list(batch.image_ids), "repeated": batch.repeated.tolist()}) + "\n")
            f.flush()
            yield batch


def _load_initial_weights(model: torch.nn.Module, path: str, layers: int | None) -> None:
    if path.endswith(".weights"):
        from yolov2.models import load_darknet_weights

        report = load_darknet_weights(model, path, max_layers=layers)
        log.info("initialised from Darknet weights %s: %s", path, report)
    else:
        from yolov2.inference import load_model_file

        source, _ = load_model_file(path)
        missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
        log.info("initialised from %s (missing %d, unexpected %d)", path, len(missing), len(unexpected))


def _freeze_backbone(model: torch.nn.Module, num_layers: int) -> None:
    """Freeze the first ``num_layers`` Darknet conv layers (and their batch norms)."""
    if num_layers <= 0:
        return
    for index, (conv, bn) in enumerate(model.darknet_layers()):
        if index >= num_layers:
            break
        for module in (conv, bn):
            if module is not None:
                for p in module.parameters():
                    p.requires_grad_(False)


def _maybe_inject_fault(fault: dict[str, Any] | None, rank: int, step: int) -> None:
    """Test hook (env YOLOV2_FAULT_TRAIN_STEP + YOLOV2_FAULT_TRAIN_DIR): one rank fails once at that step.

    YOLOV2_FAULT_TRAIN_RANK picks the rank (default 0); YOLOV2_FAULT_TRAIN_KIND=sigkill makes the worker
    process die by SIGKILL (no Python cleanup, no exception for Ray to catch) instead of raising.
    """
    if not fault or rank != fault.get("rank", 0) or step != fault["step"]:
        return
    marker = Path(fault["marker_dir"]) / f"train-step-{step}.failed"
    if marker.exists():
        return
    marker.write_text(f"rank {rank} pid {os.getpid()}")
    if fault.get("kind") == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"injected training failure at step {step}")


def _fault_from_env() -> dict[str, Any] | None:
    """The fault-injection hook's settings from the environment (tests only), or None."""
    step = os.environ.get("YOLOV2_FAULT_TRAIN_STEP")
    if not step:
        return None
    return {"step": int(step), "marker_dir": os.environ["YOLOV2_FAULT_TRAIN_DIR"],
            "rank": int(os.environ.get("YOLOV2_FAULT_TRAIN_RANK", "0")),
            "kind": os.environ.get("YOLOV2_FAULT_TRAIN_KIND", "raise")}


def _model_file_bytes(model: torch.nn.Module, spec: ModelSpec) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt"
        save_model_file(path, model, spec)
        return path.read_bytes()


class _RankZeroLogger:
    """Metrics to MLflow (rank 0 only) and a live console line; MLflow failures never stop training.

    Values go through a :class:`MetricSender`: buffered while the server is unreachable, sent when it
    answers again. At the end the sender gets ``flush_timeout`` seconds; values still unsent are written
    to ``<output>/mlflow_unsent_metrics.jsonl``, and ``mlflow_delivery.json`` says what happened (the
    driver reports it in the stage's log and manifest).
    """

    def __init__(self, tracking_uri: str | None, run_id: str | None, rank: int, total_steps: int,
                 workspace: Workspace | None = None, output_dir: str | None = None,
                 flush_timeout: float = 120.0) -> None:
        self.enabled = rank == 0
        self.sender = None
        self.log_params: Callable[[dict[str, Any]], None] | None = None
        self.started = time.time()
        self.total_steps = total_steps
        self.workspace, self.output_dir, self.flush_timeout = workspace, output_dir, flush_timeout
        if self.enabled and tracking_uri and run_id:
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient

            from pipelines.metric_sender import MetricSender
            from pipelines.tracking import server_reachable

            client = MlflowClient(tracking_uri)
            self.log_params = lambda params: client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
            self.sender = MetricSender(
                send=lambda chunk: client.log_batch(run_id, metrics=[Metric(k, v, t, s) for k, v, t, s in chunk]),
                reachable=lambda: server_reachable(tracking_uri, timeout=2.0),
            )

    def precision(self, precision, hardware, warnings: list[str]) -> None:
        """Say once what precision and layout training runs in and why; record it as MLflow params."""
        if not self.enabled:
            return
        _console(f"[train] precision: {precision.describe()} on {hardware.describe()} ({precision.reason})")
        for warning in warnings:
            _console(f"[train] warning: {warning}")
        if self.log_params is not None:
            params = {"precision.amp": precision.amp, "precision.channels_last": precision.channels_last,
                      "precision.hardware": hardware.describe()}
            try:
                self.log_params(params)
            except Exception as e:  # an unreachable server must not stop training
                log.warning("could not log the precision params to MLflow (%s): %s", e, params)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        if "epoch" in metrics:  # the end of an epoch; per-step progress is TrainProgress's
            shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "step")
            _console(f"[train] end of epoch {int(metrics['epoch'])}: {shown} ({time.time() - self.started:.0f}s)")
        if self.sender is not None:
            self.sender.add({k.replace("/", "_"): v for k, v in metrics.items()}, step)

    def close(self, step: int) -> None:
        if self.sender is None:
            return
        unsent = self.sender.close(self.flush_timeout)
        report = self.sender.delivery.to_dict()
        if unsent and self.workspace is not None and self.output_dir:
            lines = "".join(json.dumps({"key": k, "value": v, "timestamp": t, "step": s}) + "\n"
                            for k, v, t, s in unsent)
            self.workspace.write_bytes(lines.encode(), self.output_dir, UNSENT_METRICS)
            report["unsent_file"] = self.workspace.uri_of(self.output_dir, UNSENT_METRICS)
            log.warning("MLflow still unreachable after %.0fs: %d metric values kept in %s", self.flush_timeout,
                        len(unsent), report["unsent_file"])
        if self.workspace is not None and self.output_dir:
            self.workspace.write_json(report, self.output_dir, DELIVERY_REPORT)


def _console(line: str) -> None:
    """To the process's real stdout: Ray Train patches print() to log *and* echo each line (shown twice)."""
    print(line, file=sys.__stdout__, flush=True)


class _Validator:
    """VOC07 mAP@0.5 on the val split, on rank 0, with the same predictor the evaluate stage uses."""

    def __init__(self, cfg: PipelineConfig, workspace: Workspace, config: dict[str, Any], spec: ModelSpec,
                 precision) -> None:
        from yolov2.data.loader import shard_specs_from_index
        from yolov2.data.records import table_to_records

        index = workspace.read_parquet(config["shard_dir"], config["val_index"])
        self.records = table_to_records(index)
        self.shards = shard_specs_from_index(index, workspace.uri_of(config["shard_dir"]))
        self.cfg, self.spec, self.precision = cfg, spec, precision

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        from yolov2.data.loader import read_samples
        from yolov2.evaluation import compute_metrics, predict_samples
        from yolov2.inference import Predictor

        was_training = model.training
        device = next(model.parameters()).device
        predictor = Predictor(model, self.spec, input_size=self.cfg.train.input_size, letterbox=self.cfg.evaluate.letterbox,
                              resize=self.cfg.evaluate.resize, conf_thresh=self.cfg.evaluate.conf_thresh, nms_thresh=self.cfg.evaluate.nms_thresh,
                              max_det=self.cfg.evaluate.max_det, max_candidates=self.cfg.evaluate.max_candidates or 2000,
                              device=device, precision=self.precision)
        total = sum(s.num_samples for s in self.shards)
        samples = ((raw.image_bytes, raw.record) for raw in read_samples(self.shards, 0, total))
        detections, records = predict_samples(predictor, samples, batch_size=self.cfg.evaluate.batch_size)
        flat, _ = compute_metrics(records, detections, self.spec.class_names, ["voc07"])
        model.train(was_training)
        return {"map50_voc07": flat["map50_voc07"]}


# ---------------------------------------------------------------------------------------------
# On the driver
# ---------------------------------------------------------------------------------------------


def model_spec(cfg: PipelineConfig, class_names: list[str], anchors: list[list[float]]) -> ModelSpec:
    m = cfg.model
    return ModelSpec(m.name, len(class_names), [list(map(float, a)) for a in anchors], list(class_names),
                     cfg.train.input_size, m.width_multiplier, m.reorg, m.sppf, m.decoupled_head, m.batch_norm)


RAY_DATA_CPUS = 0.25  # per Ray Data read/decode task; ray_data trainers leave this much of their CPUs to them


def ray_data_train_dataset(t, shard_urls: list[str], total: int, world: int):
    """The training shards as a Ray Dataset: ``read_webdataset`` (raw bytes, file order shuffled each epoch),
    padded to a multiple of ``world`` by repeating samples (flagged ``repeated``; ``streaming_split(equal=True)``
    would otherwise drop the remainder), then decode + Darknet augmentation in ``map_batches`` on CPU tasks.

    Images come out at the schedule's largest size (the input size without multi-scale); each trainer resizes
    a batch to its step's size, which only the shared schedule knows. The augmentation draws are fresh each
    epoch (a Ray Data plan cannot see the epoch), so this path is not bit-reproducible, unlike the WebDataset one.
    """
    import ray.data

    from yolov2.data.loader import Augmentation, MultiScaleSchedule, decode_and_augment_batch

    def read():
        return ray.data.read_webdataset(shard_urls, decoder=None, shuffle="files", num_cpus=RAY_DATA_CPUS)

    ds = read().map_batches(_flag_repeated, fn_kwargs={"repeated": False}, batch_format="numpy",
                            num_cpus=RAY_DATA_CPUS)
    pad = -total % world
    if pad:
        ds = ds.union(read().limit(pad).map_batches(_flag_repeated, fn_kwargs={"repeated": True},
                                                    batch_format="numpy", num_cpus=RAY_DATA_CPUS))
    schedule = MultiScaleSchedule.from_config(t)
    size = max(schedule.sizes) if schedule else t.input_size
    return ds.map_batches(decode_and_augment_batch, batch_size=t.batch_size, batch_format="numpy",
                          num_cpus=RAY_DATA_CPUS,
                          fn_kwargs=dict(size=size, seed=t.seed, epoch=None, train=True,
                                         augmentation=Augmentation.from_config(t)))


def _flag_repeated(batch: dict[str, Any], repeated: bool) -> dict[str, Any]:
    import numpy as np

    return {**batch, "repeated": np.full(len(batch["__key__"]), repeated)}


def _has_checkpoint(storage: Path) -> bool:
    """Whether a (local) Ray Train storage folder holds one of our checkpoints."""
    return any(storage.rglob(STATE_FILE))


def train_body(ctx: StageContext, resume: bool = False) -> dict[str, Any]:
    import mlflow
    import ray.train
    from ray.train.torch import TorchTrainer

    cfg, t = ctx.cfg, ctx.cfg.train
    shard_result, anchors_result = ctx.upstream["shard"], ctx.upstream["anchors"]
    class_names = shard_result.manifest["class_names"]
    spec = model_spec(cfg, class_names, anchors_result.manifest["anchors"])
    splits = shard_result.manifest["splits"]
    run_id = mlflow.active_run().info.run_id if ctx.tracking_enabled and mlflow.active_run() else None
    config = {
        "cfg": to_dict(cfg),
        "workspace": ctx.workspace.uri,
        "output_dir": ctx.output_dir,
        "shard_dir": shard_result.output_dir,
        "train_index": splits["train"]["index"],
        "val_index": splits["val"]["index"] if "val" in splits and splits["val"]["images"] else None,
        "spec": spec.__dict__,
        "tracking_uri": mlflow.get_tracking_uri() if run_id else None,
        "run_id": run_id,
        "fault": _fault_from_env(),
        "trace_dir": os.environ.get("YOLOV2_TRAIN_TRACE_DIR"),
        "train_total": splits["train"]["images"],
    }
    datasets, worker_cpus = {}, t.cpus_per_worker
    if t.ingest == "ray_data":
        urls = [ctx.workspace.uri_of(shard_result.output_dir, name) for name in splits["train"]["shards"]]
        datasets = {"train": ray_data_train_dataset(t, urls, splits["train"]["images"], t.num_workers)}
        worker_cpus = max(t.cpus_per_worker - RAY_DATA_CPUS, RAY_DATA_CPUS)
    # Ray Train restores a run whose storage folder and name already hold checkpoints (and the stage
    # deleted that folder unless resuming), so --resume only has to keep the folder.
    storage = ctx.workspace.uri_of(ctx.output_dir, "ray")
    config["checkpoint_dir"] = ctx.out("ray", RUN_NAME)
    resumed = resume and (not ctx.workspace.is_local or _has_checkpoint(Path(storage)))
    if resume and not resumed:
        log.warning("--resume: no checkpoint under %s, starting from step 0", storage)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                               resources_per_worker={"CPU": worker_cpus,
                                                                     **({"GPU": 1} if t.use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=RUN_NAME, storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": _fail_fast_mlflow_env()} if run_id else None,
        ),
        datasets=datasets or None,
    )
    started = time.time()
    result = trainer.fit()
    if result.error:
        raise result.error
    with result.checkpoint.as_directory() as folder:
        from yolov2.engine.checkpoint import load_checkpoint

        state = load_checkpoint(Path(folder) / STATE_FILE)
    model = spec.build()
    model.load_state_dict(state["ema"]["module"] if state.get("ema") else state["model"])
    model_bytes = _model_file_bytes(model, spec)
    ctx.workspace.write_bytes(model_bytes, ctx.out("model.pt"))
    has_best = ctx.workspace.exists(ctx.out("best.pt"))
    final_metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    delivery = _report_delivery(ctx.workspace, ctx.output_dir)
    if ctx.tracking_enabled:
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "model.pt").write_bytes(model_bytes)
            ctx.track("final model", _log_final_model, model, t.register_name, Path(folder) / "model.pt",
                      t.input_size)
    return {
        "model": "model.pt",
        "best": "best.pt" if has_best else None,
        "steps": int(state["state"]["step"]),
        "epochs": int(state["state"]["epoch"]),
        "seen": int(state["state"]["seen"]),
        "best_map50_voc07": float(state["state"]["best_metric"]),
        "final_metrics": final_metrics,
        "train_seconds": round(time.time() - started, 1),
        "spec": spec.__dict__,
        "resumed": resumed,
        "precision": state.get("precision"),
        "mlflow_delivery": delivery,
    }


def _fail_fast_mlflow_env() -> dict[str, str]:
    """Environment for the train workers: MLflow requests fail at once instead of retrying for minutes.

    Rank 0's MetricSender retries on its own (every second, values kept in memory), so a dead server
    costs nothing; inside MLflow's retries the values would wait behind a back-off of up to minutes.
    Settings the user made in the environment are kept.
    """
    return {k: os.environ.get(k, v) for k, v in tracking.fail_fast_mlflow_env(10).items()}


def _report_delivery(workspace: Workspace, output_dir: str) -> dict[str, Any] | None:
    """Rank 0's account of its MLflow metrics, said in the stage's log (an outage is worth a warning)."""
    if not workspace.exists(output_dir, DELIVERY_REPORT):
        return None
    report = workspace.read_json(output_dir, DELIVERY_REPORT)
    if report.get("unsent"):
        log.warning("train: MLflow was unreachable at the end; %d metric values were not sent and are kept in %s",
                    report["unsent"], report.get("unsent_file"))
    elif report.get("outages"):
        log.warning("train: MLflow was unreachable %d time(s) during training; the %d metric values logged "
                    "meanwhile were buffered and sent afterwards (%d sent in all, none lost)",
                    report["outages"], report["sent_late"], report["sent"])
    else:
        log.info("train: %d metric values sent to MLflow", report["sent"])
    return report


def _log_final_model(model: torch.nn.Module, register_name: str | None, model_file: Path, input_size: int) -> None:
    """``mlflow.pytorch.log_model`` (+ registration) and the plain model file as an artifact."""
    import mlflow
    import numpy as np

    mlflow.log_artifact(str(model_file))
    try:
        example = np.zeros((1, 3, input_size, input_size), np.float32)
        mlflow.pytorch.log_model(model.eval(), name="model", registered_model_name=register_name,
                                 input_example=example)
    except Exception as e:  # registry unsupported by the store, or no network for the pip env inference
        log.warning("mlflow.pytorch.log_model failed (%s); model.pt is logged as an artifact instead", e)


def run(cfg: PipelineConfig, workspace: Workspace, *, upstream: dict[str, StageResult] | None = None,
        force: bool = False, tracking_enabled: bool = True, resume: bool = False) -> StageResult:
    return run_stage(STAGE, cfg, workspace, lambda ctx: train_body(ctx, resume), upstream=upstream, force=force,
                     tracking_enabled=tracking_enabled, keep_partial_output=resume)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli_common.add_stage_arguments(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run of this config from its last checkpoint")
    args = parser.parse_args(argv)
    return cli_common.run_single_stage(STAGE, lambda *a, **k: run(*a, resume=args.resume, **k), args)


if __name__ == "__main__":
    raise SystemExit(main())
