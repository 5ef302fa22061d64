"""Training's validation on every rank: each predicts its share of the val split, rank 0 scores the whole.

On rank 0 alone the other ranks would wait for the whole of it; shared out, each of N ranks predicts about
1/N of the images, and only the scoring stays on rank 0 (``benchmarks/validation.py`` times both). The
library predicts a share and merges the parts
(:mod:`yolov2.evaluation`); here is only the ``torch.distributed`` glue: rank 0's buffers to every rank,
the parts gathered to rank 0 (``gather_object``, on gloo and NCCL).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.distributed as dist

from yolov2.config import PredictConfig
from yolov2.data.records import ImageRecord
from yolov2.data.shards import ShardSpec
from yolov2.engine.precision import Precision
from yolov2.evaluation import PredictedPart, merge_parts, predict_share
from yolov2.inference import ModelSpec
from yolov2.metrics import DetectionTable


def gather_predictions(
    model: torch.nn.Module,
    spec: ModelSpec,
    shards: Sequence[ShardSpec],
    predict: PredictConfig,
    batch_size: int,
    precision: Precision,
    rank: int,
    world: int,
) -> tuple[DetectionTable, list[ImageRecord]] | None:
    """The detections and records of the whole split on rank 0, None on the others; a collective: every rank
    calls it at the same point. With ``torch.distributed`` not initialised (or ``world`` 1) this process
    predicts everything."""
    if world == 1 or not (dist.is_available() and dist.is_initialized()):
        return merge_parts([predict_share(model, spec, shards, predict, batch_size, precision)])
    share_rank_zero_buffers(model)
    part = predict_share(model, spec, shards, predict, batch_size, precision, world, rank)
    parts: list[PredictedPart | None] = [None] * world
    device = next(model.parameters()).device
    # NCCL sends the pickled objects from the current CUDA device
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        dist.gather_object(part, parts if rank == 0 else None, dst=0)
    if rank != 0:
        return None
    return merge_parts(p for p in parts if p is not None)


def share_rank_zero_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (BN running statistics) on every rank: DDP keeps the parameters equal, but each rank's
    last forward updated its own statistics (DDP syncs them at the next forward), and so the EMA's copies."""
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)
