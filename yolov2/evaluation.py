"""Detections of a model over shards, the plain single-process way, and the standard metric set.

The evaluate stage runs the same :class:`~yolov2.inference.Predictor` in parallel Ray actors; the
training loop's validation and the tests use :func:`predict_samples` here. Both produce a
:class:`~yolov2.metrics.DetectionTable` whose rows are ordered by image (input order), then by
decreasing score, so the two paths give identical tables.

Validation on N ranks: each predicts its share of the split (:func:`share_range`, :func:`predict_share`), the
parts go to one rank (the caller's ``torch.distributed`` glue) and :func:`merge_parts` puts them back in image
order; :func:`validation_metrics` scores the whole. Shares are whole batches of the one-process sequence, so
the merged detections, and so the metrics, are those of one process validating alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from yolov2.config import PredictConfig
from yolov2.data.images import decode_rgb
from yolov2.data.partition import rank_length
from yolov2.data.records import ImageRecord
from yolov2.data.shards import ShardSpec, read_samples
from yolov2.engine.precision import Precision
from yolov2.engine.results import VAL_METRICS
from yolov2.inference import ModelSpec, Predictor
from yolov2.metrics import DetectionTable, coco_evaluate, voc_evaluate
from yolov2.postprocess import Detections


def detections_table(image_ids: Sequence[str], detections: Sequence[Detections]) -> DetectionTable:
    """Per-image :class:`Detections` -> one table (rows: image order, then each image's own order)."""
    counts = [len(d.scores) for d in detections]
    if sum(counts) == 0:
        return DetectionTable.empty()
    return DetectionTable.from_arrays(
        np.repeat(np.asarray(image_ids, dtype=object), counts),
        np.concatenate([d.labels.cpu().numpy() for d in detections]),
        np.concatenate([d.scores.float().cpu().numpy() for d in detections]),
        np.concatenate([d.boxes.float().cpu().numpy() for d in detections]).reshape(-1, 4),
    )


def predict_samples(
    predictor: Predictor, samples: Iterable[tuple[bytes, ImageRecord]], batch_size: int = 8
) -> tuple[DetectionTable, list[ImageRecord]]:
    """Run ``predictor`` over ``(jpeg_bytes, record)`` pairs; returns the detections and the records seen."""
    tables: list[DetectionTable] = []
    records: list[ImageRecord] = []
    batch: list[tuple[bytes, ImageRecord]] = []

    def flush() -> None:
        images = [decode_rgb(data, rec.path) for data, rec in batch]
        tables.append(detections_table([rec.image_id for _, rec in batch], predictor(images)))
        records.extend(rec for _, rec in batch)
        batch.clear()

    for sample in samples:
        batch.append(sample)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return DetectionTable.concat(tables), records


def compute_metrics(
    records: Sequence[ImageRecord],
    detections: DetectionTable,
    class_names: Sequence[str],
    metrics: Sequence[str] = ("voc07", "voc12", "coco"),
    coco_backend: str | None = None,
    coco_chunks: int = 1,
    map_fn: Callable[..., Iterable[Any]] = map,
) -> tuple[dict[str, float], dict[str, Any]]:
    """The headline numbers (flat, for MLflow/summary.json) and the full results by metric name.

    ``map50_voc07`` is VOC2007 11-point mAP at IoU 0.5; ``map50_voc12`` the all-point one; ``coco_*``
    are pycocotools' 12 stats.
    """
    flat: dict[str, float] = {}
    results: dict[str, Any] = {}
    for name in metrics:
        if name in ("voc07", "voc12"):
            voc = voc_evaluate(records, detections, class_names, 0.5, use_07_metric=name == "voc07")
            flat[f"map50_{name}"] = voc.mAP if np.isfinite(voc.mAP) else 0.0
            for cls, ap in zip(class_names, voc.ap):
                if np.isfinite(ap):
                    flat[f"ap50_{name}.{cls}"] = float(ap)
            results[name] = voc
        elif name == "coco":
            coco = coco_evaluate(
                records, detections, class_names, backend=coco_backend, num_chunks=coco_chunks, map_fn=map_fn
            )
            flat.update({f"coco_{k}": float(v) for k, v in coco.stats.items()})
            results[name] = coco
        else:
            raise ValueError(f"unknown metric {name!r} (voc07, voc12, coco)")
    return flat, results


@dataclass(frozen=True)
class PredictedPart:
    """The detections and records of the samples at positions ``[start, start + len(records))`` of a split (one
    rank's share, :func:`predict_share`); rows in image order, then by decreasing score."""

    start: int
    detections: DetectionTable
    records: list[ImageRecord]


def share_range(total: int, world_size: int, rank: int, batch_size: int) -> tuple[int, int]:
    """Positions ``[start, stop)`` of a split's ``total`` samples that ``rank`` predicts when validating.

    The split's batches of ``batch_size`` (from position 0, as one process makes them) are dealt out as the
    training data is (:func:`~yolov2.data.partition.rank_length` contiguous batches per rank, the last ranks
    fewer or none), never padded or repeated: each image is predicted in the very batch one process would put
    it in, so the detections are bit for bit those of one process.
    """
    if not 0 <= rank < world_size or batch_size < 1:
        raise ValueError(f"rank {rank} of {world_size}, batch size {batch_size}: out of range")
    batches = -(-total // batch_size)
    per_rank = rank_length(batches, world_size)
    first = min(rank * per_rank, batches)
    last = min(first + per_rank, batches)
    return min(first * batch_size, total), min(last * batch_size, total)


def predict_share(
    model: nn.Module,
    spec: ModelSpec,
    shards: Sequence[ShardSpec],
    predict: PredictConfig | None = None,
    batch_size: int = 8,
    precision: Precision | None = None,
    world_size: int = 1,
    rank: int = 0,
) -> PredictedPart:
    """Detections of ``model`` over ``rank``'s share (:func:`share_range`) of the samples of ``shards`` (all of
    them with the defaults).

    A :class:`Predictor` with ``predict`` (None: its defaults at ``spec.input_size``) on the device the model's
    parameters are on; the model is put in eval mode for this and then back in the mode it was in.
    """
    was_training = model.training
    total = sum(s.num_samples for s in shards)
    start, stop = share_range(total, world_size, rank, batch_size)
    try:
        device = next(model.parameters()).device
        predictor = Predictor(model, spec, predict, device=device, precision=precision)
        samples = ((raw.image_bytes, raw.record) for raw in read_samples(shards, start, stop))
        detections, records = predict_samples(predictor, samples, batch_size=batch_size)
    finally:
        model.train(was_training)
    return PredictedPart(start, detections, records)


def merge_parts(parts: Iterable[PredictedPart]) -> tuple[DetectionTable, list[ImageRecord]]:
    """The split's detections and records from its ranks' parts, in image order whatever order the parts come
    in; the parts must cover the split's positions from 0 without a gap or an overlap."""
    ordered = sorted(parts, key=lambda part: part.start)
    position = 0
    for part in ordered:
        if part.start != position:
            raise ValueError(f"validation parts do not tile the split: one starts at {part.start}, not {position}")
        position += len(part.records)
    detections = DetectionTable.concat([p.detections for p in ordered if len(p.detections)])
    return detections, [record for part in ordered for record in part.records]


def validation_metrics(
    records: Sequence[ImageRecord],
    detections: DetectionTable,
    class_names: Sequence[str],
    coco_backend: str | None = None,
) -> dict[str, float]:
    """Training's validation numbers (:data:`~yolov2.engine.results.VAL_METRICS`): VOC07 and VOC12 mAP@0.5,
    COCO AP at IoU 0.5:0.95 and AP50, by :func:`compute_metrics`. The train stage keeps as ``best.pt`` the
    epoch with the best ``map50_voc07``."""
    flat, _ = compute_metrics(records, detections, class_names, ("voc07", "voc12", "coco"), coco_backend)
    return {name: flat[name] for name in VAL_METRICS.values()}
