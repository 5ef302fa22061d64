"""Detections of a model over shards, the plain single-process way, and the standard metric set.

The evaluate stage runs the same :class:`~yolov2.inference.Predictor` in parallel Ray actors; the
training loop's validation (:func:`voc07_map50`) and the tests use :func:`predict_samples` here. Both produce a
:class:`~yolov2.metrics.DetectionTable` whose rows are ordered by image (input order), then by
decreasing score, so the two paths give identical tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from torch import nn

from yolov2.config import PredictConfig
from yolov2.data.images import decode_rgb
from yolov2.data.records import ImageRecord
from yolov2.data.shards import ShardSpec, read_samples
from yolov2.engine.precision import Precision
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


def voc07_map50(
    model: nn.Module,
    spec: ModelSpec,
    shards: Sequence[ShardSpec],
    predict: PredictConfig | None = None,
    batch_size: int = 8,
    precision: Precision | None = None,
) -> float:
    """VOC2007 11-point mAP at IoU 0.5 of ``model`` over every sample of ``shards``: training's validation.

    A :class:`Predictor` with ``predict`` (None: its defaults at ``spec.input_size``) on the device the model's
    parameters are on, and :func:`compute_metrics`; the model is put in eval mode for this and then back in
    the mode it was in.
    """
    was_training = model.training
    device = next(model.parameters()).device
    predictor = Predictor(model, spec, predict, device=device, precision=precision)
    total = sum(s.num_samples for s in shards)
    samples = ((raw.image_bytes, raw.record) for raw in read_samples(shards, 0, total))
    detections, records = predict_samples(predictor, samples, batch_size=batch_size)
    flat, _ = compute_metrics(records, detections, spec.class_names, ["voc07"])
    model.train(was_training)
    return flat["map50_voc07"]
