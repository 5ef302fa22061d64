"""Matplotlib figures of the analysis data: PR curves, confusion matrix, error breakdown, sample images,
the anchors stage's anchor shapes over the box shapes, and the training curves of the per-epoch results table.

Figures are built with ``matplotlib.figure.Figure`` directly, not ``pyplot``: no global state, no
display, no backend to select (saving uses Agg), so they work in Ray workers and on headless
machines. Each function returns a Figure; ``fig.savefig(path)`` or ``mlflow.log_figure(fig, name)``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from yolov2.data.records import ImageRecord
from yolov2.metrics.analysis import (
    ERROR_TYPES,
    ErrorBreakdown,
    PrCurve,
    coco_pr_curves,
    confusion_matrix,
    error_breakdown,
    voc_pr_curves,
)
from yolov2.metrics.coco import CocoResult
from yolov2.metrics.detections import DetectionTable
from yolov2.metrics.voc import VocResult


def pr_curves_figure(curves: Sequence[PrCurve], title: str = "Precision-recall") -> Figure:
    """One small panel per class: the raw curve, its interpolated envelope, and the AP in the title."""
    n = max(1, len(curves))
    cols = min(5, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(2.6 * cols, 2.3 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, curve in zip(axes.flat, curves):
        if len(curve.recall):
            ax.plot(curve.recall, curve.precision, lw=0.8, color="tab:blue", label="precision")
            ax.plot(curve.recall, curve.envelope, lw=1.2, color="tab:orange", label="interpolated")
        ap = "n/a" if math.isnan(curve.ap) else f"{curve.ap:.3f}"
        ax.set_title(f"{curve.class_name}  AP {ap}", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(curves) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    return fig


def confusion_matrix_figure(matrix: np.ndarray, class_names: Sequence[str], normalize: bool = True) -> Figure:
    """``matrix[predicted, true]`` (C + 1 squared, last = background) as a heat map; columns normalised
    to sum to 1 when ``normalize`` (each true class's outcomes), raw counts written in the cells."""
    labels = list(class_names) + ["background"]
    m = matrix.astype(np.float64)
    shown = m / np.maximum(m.sum(axis=0, keepdims=True), 1) if normalize else m
    size = max(4.0, 0.35 * len(labels) + 2)
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(shown, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, shrink=0.7)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("true class")
    ax.set_ylabel("predicted class")
    if len(labels) <= 25:
        for (i, j), v in np.ndenumerate(matrix):
            if v:
                ax.text(j, i, str(int(v)), ha="center", va="center", fontsize=6,
                        color="white" if shown[i, j] > 0.5 * shown.max() else "black")  # fmt: skip
    ax.set_title("Confusion matrix" + (" (columns normalised)" if normalize else ""))
    return fig


def error_breakdown_figure(breakdown: ErrorBreakdown) -> Figure:
    """Bar chart of the error counts, with the number of true positives for scale."""
    names = list(ERROR_TYPES)
    values = [breakdown.counts[n] for n in names]
    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.subplots()
    bars = ax.bar(names, values, color=["#d62728", "#ff7f0e", "#9467bd", "#7f7f7f", "#8c564b", "#1f77b4"])
    ax.bar_label(bars, fontsize=8)
    ax.set_ylabel("count")
    ax.set_title(
        f"Error breakdown (IoU fg {breakdown.iou_fg:g}, bg {breakdown.iou_bg:g}); "
        f"true positives: {breakdown.counts['true_positives']}",
        fontsize=9,
    )
    ax.tick_params(axis="x", labelsize=8)
    return fig


def sample_detections_figure(
    records: Sequence[ImageRecord],
    detections: DetectionTable,
    class_names: Sequence[str],
    num_images: int = 16,
    score_threshold: float = 0.3,
) -> Figure | None:
    """A grid of the first ``num_images`` readable images (``record.path``) with ground truth in green
    and detections (score >= ``score_threshold``) in red; None when no image file can be read."""
    chosen: list[tuple[ImageRecord, np.ndarray]] = []
    for record in records:
        if len(chosen) == num_images:
            break
        path = Path(record.path)
        if path.is_file():
            try:
                with Image.open(path) as im:
                    chosen.append((record, np.asarray(im.convert("RGB"))))
            except OSError:
                continue
    if not chosen:
        return None
    cols = min(4, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    fig = Figure(figsize=(3.2 * cols, 3.0 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (record, pixels) in zip(axes.flat, chosen):
        ax.imshow(pixels)
        for box, label in zip(record.boxes, record.labels):
            _draw_box(ax, box, "lime", class_names[label])
        mine = (detections.image_id == record.image_id) & (detections.score >= score_threshold)
        for box, label, score in zip(detections.boxes[mine], detections.label[mine], detections.score[mine]):
            _draw_box(ax, box, "red", f"{class_names[label]} {score:.2f}")
        ax.set_title(record.image_id, fontsize=7)
        ax.axis("off")
    for ax in list(axes.flat)[len(chosen) :]:
        ax.set_visible(False)
    return fig


def evaluation_figures(
    records: Sequence[ImageRecord],
    detections: DetectionTable,
    class_names: Sequence[str],
    results: Mapping[str, Any],
    num_sample_images: int = 16,
) -> dict[str, Figure]:
    """The evaluate stage's figures by artifact name: PR curves (VOC2010+ if computed, else VOC2007,
    else COCO at IoU 0.5), confusion matrix, error breakdown, and sample images when readable."""
    figures: dict[str, Figure] = {}
    voc = results.get("voc12") or results.get("voc07")
    if isinstance(voc, VocResult):
        figures["pr_curves.png"] = pr_curves_figure(voc_pr_curves(voc), f"Precision-recall, IoU {voc.iou_threshold:g}")
    elif isinstance(results.get("coco"), CocoResult):
        figures["pr_curves.png"] = pr_curves_figure(coco_pr_curves(results["coco"]), "Precision-recall (COCO, IoU 0.5)")
    figures["confusion_matrix.png"] = confusion_matrix_figure(
        confusion_matrix(records, detections, len(class_names)), class_names
    )
    figures["error_breakdown.png"] = error_breakdown_figure(error_breakdown(records, detections, len(class_names)))
    if num_sample_images > 0:
        samples = sample_detections_figure(records, detections, class_names, num_sample_images)
        if samples is not None:
            figures["sample_detections.png"] = samples
    return figures


def _draw_box(ax, box: np.ndarray, color: str, text: str) -> None:
    x1, y1, x2, y2 = (float(v) for v in box)
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.0))
    ax.text(x1, y1, text, fontsize=5, color="black", backgroundcolor=color, va="bottom")


MAX_ANCHOR_PLOT_POINTS = 20_000  # box shapes drawn by anchors_figure (a seeded subsample beyond this)


def anchors_figure(
    wh_grid: np.ndarray,
    anchors_grid: np.ndarray,
    table: Mapping[int, float],
    k: int,
    mean_iou: float,
    title: str,
    seed: int = 0,
) -> Figure:
    """Left: box shapes wh_grid (float64[N, 2], (w, h) in grid cells; a seeded subsample of at most
    :data:`MAX_ANCHOR_PLOT_POINTS`) with each anchor of anchors_grid (float64[k, 2], grid cells) drawn as a
    rectangle from the origin to its (w, h); right: mean IoU against k (``table``), the chosen k marked."""
    fig = Figure(figsize=(11, 4.8), layout="constrained")
    ax_shapes, ax_k = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.25, 1]})
    points = wh_grid
    if len(points) > MAX_ANCHOR_PLOT_POINTS:
        keep = np.sort(np.random.default_rng(seed).choice(len(points), MAX_ANCHOR_PLOT_POINTS, replace=False))
        points = points[keep]
    dense = len(points) > 2000
    ax_shapes.scatter(
        points[:, 0],
        points[:, 1],
        s=2 if dense else 8,
        alpha=0.2 if dense else 0.5,
        color="tab:blue",
        linewidths=0,
        label=f"boxes ({len(points)} of {len(wh_grid)})" if len(points) < len(wh_grid) else "boxes",
    )
    colors = [f"C{(i + 1) % 10}" for i in range(len(anchors_grid))]
    for (w, h), color in zip(anchors_grid, colors):
        ax_shapes.add_patch(Rectangle((0, 0), w, h, fill=False, lw=1.6, edgecolor=color))
        ax_shapes.plot([w], [h], marker="o", ms=5, color=color)
        ax_shapes.annotate(
            f"{w:.2f}x{h:.2f}", (w, h), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color
        )
    limit = 1.05 * max(float(np.max(wh_grid)), float(np.max(anchors_grid)))
    ax_shapes.set_xlim(0, limit)
    ax_shapes.set_ylim(0, limit)
    ax_shapes.set_aspect("equal")
    ax_shapes.set_xlabel("box width (grid cells)")
    ax_shapes.set_ylabel("box height (grid cells)")
    ax_shapes.set_title(f"{len(anchors_grid)} anchors, mean IoU {mean_iou:.4f}", fontsize=10)
    ax_shapes.legend(loc="upper left", fontsize=7)

    if table:
        ks = sorted(table)
        ax_k.plot(ks, [table[x] for x in ks], marker="o", color="tab:blue", label="k-means (1 - IoU)")
    ax_k.plot([k], [mean_iou], marker="*", ms=14, color="tab:red", linestyle="none", label=f"chosen: k={k}")
    ax_k.set_xlabel("number of anchors k")
    ax_k.set_ylabel("mean IoU of boxes with their best anchor")
    ax_k.set_xticks(sorted(set(table) | {k}))
    ax_k.set_ylim(0, 1)
    ax_k.grid(alpha=0.3)
    ax_k.legend(loc="lower right", fontsize=8)
    ax_k.set_title(
        "Box generation: mean IoU against k" if table else "clustering skipped (pinned anchors)", fontsize=10
    )
    fig.suptitle(title, fontsize=11)
    return fig


def results_figure(columns: Mapping[str, Sequence[float | None]]) -> Figure:
    """Training curves by epoch from the per-epoch results table's columns (``table.to_pydict()``): the loss
    parts (``loss_*``), the learning rate (``lr``) and the validation metrics (``val_*``, drawn where present:
    epochs without validation hold None)."""
    epochs = np.asarray(columns["epoch"], np.float64)
    fig = Figure(figsize=(13, 3.6), layout="constrained")
    ax_loss, ax_lr, ax_val = fig.subplots(1, 3)
    panels = ((ax_loss, "loss_", "training loss (epoch mean)"), (ax_val, "val_", "validation"))
    for ax, prefix, title in panels:
        for name, values in columns.items():
            if not name.startswith(prefix):
                continue
            y = np.array([np.nan if v is None else v for v in values], np.float64)
            shown = np.isfinite(y)
            if shown.any():
                ax.plot(epochs[shown], y[shown], marker="o", ms=3, lw=1.2, label=name.removeprefix(prefix))
        ax.set_title(title, fontsize=10)
        if ax.lines:
            ax.legend(fontsize=7)
    ax_lr.plot(epochs, np.asarray(columns["lr"], np.float64), marker="o", ms=3, lw=1.2, color="tab:green")
    ax_lr.set_title("learning rate (last step of the epoch)", fontsize=10)
    ax_val.set_ylim(0, 1)
    for ax in (ax_loss, ax_lr, ax_val):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    return fig


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (Agg, 110 dpi unless told)."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
