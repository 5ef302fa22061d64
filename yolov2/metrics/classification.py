"""Classification metrics for the classifier pretraining: top-k accuracy, the confusion matrix and its figure.

Top-k: a sample counts as correct when fewer than ``k`` other classes score **at least** as high as its true class.
Ties (and NaN scores) count against the sample, so a model that scores every class the same (an untrained one)
is not credited with a perfect top-1, whatever ``torch.topk`` would pick among the tied classes. A ``k`` of at
least the number of classes is always right and says nothing: it is left out of the results (top-5 of a 3-class
problem is not reported as 1.0), and asking :func:`topk_accuracy` for it alone is a ``ValueError``.

Counts (:func:`topk_correct`, :func:`class_confusion_matrix`) add up over batches, so an evaluation loop sums them
and divides once. The confusion matrix has the true class in rows, the predicted class in columns (the
scikit-learn orientation; the detector's :func:`yolov2.metrics.analysis.confusion_matrix` is the other way round
and has a background class, which a classifier has not).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["topk_correct", "topk_accuracy", "class_confusion_matrix", "class_confusion_figure", "class_samples_figure"]


def topk_correct(
    scores: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray, ks: Sequence[int] = (1, 5)
) -> dict[int, int]:
    """How many samples are right within the top ``k`` (module docstring), for each ``k`` of ``ks`` below the
    number of classes C (the others are left out).

    scores (Tensor[N, C]): logits or probabilities, any monotone scale; targets (Tensor[N]): class indices.
    """
    if any(k <= 0 for k in ks):
        raise ValueError(f"top-k needs k >= 1, got {list(ks)}")
    scores_t, targets_t = _checked(scores, targets)
    num_classes = scores_t.shape[1]
    true_score = scores_t.gather(1, targets_t[:, None])
    # Other classes not scoring below the true one: "not <" counts NaN against the sample, on either side (minus
    # one for the true class itself, which never scores below itself).
    rank = (~(scores_t < true_score)).sum(dim=1) - 1
    return {k: int((rank < k).sum()) for k in ks if k < num_classes}


def topk_accuracy(
    scores: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray, ks: Sequence[int] = (1, 5)
) -> dict[int, float]:
    """:func:`topk_correct` as fractions of the N samples. A ``k`` that is not below C is left out; when that
    leaves nothing (``ks=(5,)`` on 3 classes), a ValueError says so instead of an empty answer."""
    scores_t, targets_t = _checked(scores, targets)
    num_samples, num_classes = scores_t.shape
    correct = topk_correct(scores_t, targets_t, ks)
    if not correct:
        raise ValueError(
            f"top-{list(ks)} accuracy of {num_classes} classes: every k is at least the number of classes, "
            "where every sample is right by definition"
        )
    if num_samples == 0:
        raise ValueError("top-k accuracy of no samples is undefined")
    return {k: n / num_samples for k, n in correct.items()}


def class_confusion_matrix(
    targets: torch.Tensor | np.ndarray, predictions: torch.Tensor | np.ndarray, num_classes: int
) -> np.ndarray:
    """int64[C, C] counts: ``matrix[t, p]`` samples of true class ``t`` predicted as ``p`` (rows true, columns
    predicted). targets, predictions (int[N]): class indices in ``0..C-1``."""
    t = np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets).reshape(-1).astype(np.int64)
    p = np.asarray(predictions.cpu() if isinstance(predictions, torch.Tensor) else predictions)
    p = p.reshape(-1).astype(np.int64)
    if len(t) != len(p):
        raise ValueError(f"{len(t)} targets but {len(p)} predictions")
    for name, values in (("target", t), ("prediction", p)):
        if len(values) and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"a {name} class is outside 0..{num_classes - 1}: {values.min()}..{values.max()}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def class_confusion_figure(matrix: np.ndarray, class_names: Sequence[str], normalize: bool = True) -> Figure:
    """``matrix[true, predicted]`` (:func:`class_confusion_matrix`) as a heat map, rows normalised to sum to 1
    when ``normalize`` (each true class's recall on the diagonal). Counts are written in the cells, and the class
    names on the axes, while they stay legible (up to 25 and 60 classes)."""
    from matplotlib.figure import Figure  # here: training imports the metrics without drawing anything

    n = len(class_names)
    if matrix.shape != (n, n):
        raise ValueError(f"confusion matrix is {matrix.shape}, expected ({n}, {n}) for {n} class names")
    m = matrix.astype(np.float64)
    shown = m / np.maximum(m.sum(axis=1, keepdims=True), 1) if normalize else m
    size = min(max(4.0, 0.35 * n + 2), 20.0)
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(shown, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, shrink=0.7)
    if n <= 60:
        ax.set_xticks(range(n), list(class_names), rotation=90, fontsize=7)
        ax.set_yticks(range(n), list(class_names), fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 25:
        top = shown.max() if shown.size else 0.0
        for (i, j), v in np.ndenumerate(matrix):
            if v:
                color = "white" if shown[i, j] > 0.5 * top else "black"
                ax.text(j, i, str(int(v)), ha="center", va="center", fontsize=6, color=color)
    ax.set_title("Confusion matrix" + (" (rows normalised)" if normalize else ""))
    return fig


def class_samples_figure(
    images: Sequence[np.ndarray],
    labels: Sequence[int],
    predicted: Sequence[int],
    confidence: Sequence[float],
    class_names: Sequence[str],
) -> Figure:
    """Images (uint8[H, W, 3]) in a grid, each titled with its predicted class and confidence, green when it is
    the true class and red (with the true class) when not."""
    from matplotlib.figure import Figure

    n = len(images)
    if not (len(labels) == len(predicted) == len(confidence) == n):
        raise ValueError("images, labels, predictions and confidences must be as many")
    columns = max(1, min(4, n))
    rows = max(1, -(-n // columns))
    fig = Figure(figsize=(2.4 * columns, 2.6 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image, label, guess, p in zip(axes, images, labels, predicted, confidence):
        ax.imshow(image)
        right = guess == label
        title = f"{class_names[guess]} {p:.2f}" + ("" if right else f"\n(true: {class_names[label]})")
        ax.set_title(title, fontsize=8, color="green" if right else "red")
    return fig


def _checked(
    scores: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores float[N, C], targets int64[N]) as tensors on the scores' device, shapes and ranges checked."""
    scores_t = torch.as_tensor(scores)
    if scores_t.dim() != 2:
        raise ValueError(f"scores must be (N, C), got shape {tuple(scores_t.shape)}")
    targets_t = torch.as_tensor(targets, device=scores_t.device).reshape(-1).long()
    if len(targets_t) != len(scores_t):
        raise ValueError(f"{len(scores_t)} score rows but {len(targets_t)} targets")
    num_classes = scores_t.shape[1]
    if len(targets_t) and (int(targets_t.min()) < 0 or int(targets_t.max()) >= num_classes):
        raise ValueError(f"a target class is outside 0..{num_classes - 1}")
    return scores_t, targets_t
