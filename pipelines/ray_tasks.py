"""Waiting for a stage's Ray tasks: their results in submission order, a progress line as they end, and the first
failure stopping the rest. The shard stage and the pretrain stage's data both fan work out this way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ray

from yolov2.errors import YoloV2Error
from yolov2.progress import Progress


def gather(refs: Sequence[ray.ObjectRef], weights: Sequence[int], progress: Progress) -> list[Any]:
    """Each task's result, in the order of ``refs``; ``progress`` advances by a task's weight (its images,
    samples) as it ends. When a task fails the others are stopped (:func:`stop_tasks`) and its error raised: a
    library error (bad input, disk full) as itself, without Ray's frames."""
    index_of = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            try:
                results[index_of[ref]] = ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                stop_tasks(pending)
                if isinstance(e.cause, YoloV2Error):
                    raise e.cause from None
                raise
            progress.advance(weights[index_of[ref]])
    return results


def stop_tasks(refs: list[ray.ObjectRef]) -> None:
    """Cancel the other tasks after one failed and wait for them, so none writes after the stage has failed (a
    cancelled task's atomic write removes its temp file)."""
    for ref in refs:
        ray.cancel(ref)
    ray.wait(refs, num_returns=len(refs), timeout=60)
