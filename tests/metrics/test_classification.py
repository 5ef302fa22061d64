"""yolov2/metrics/classification.py: top-k accuracy and the confusion matrix against plain Python loops (and
torch.topk where no score ties), fewer classes than k, and the confusion-matrix figure rendered headless."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from yolov2.metrics.classification import class_confusion_figure, class_confusion_matrix, topk_accuracy, topk_correct


def slow_topk_correct(scores: list[list[float]], targets: list[int], k: int) -> int:
    """Sort each row's classes by score, ties broken against the true class (it goes after the classes it ties
    with); correct when the true class is among the first k."""
    correct = 0
    for row, target in zip(scores, targets):
        order = sorted(range(len(row)), key=lambda j: (-row[j], j == target))
        correct += order.index(target) < k
    return correct


def slow_confusion(targets: list[int], predictions: list[int], num_classes: int) -> list[list[int]]:
    matrix = [[0] * num_classes for _ in range(num_classes)]
    for t, p in zip(targets, predictions):
        matrix[t][p] += 1
    return matrix


def test_topk_matches_a_sort_and_torch_topk_without_ties():
    rng = np.random.default_rng(0)
    scores = torch.from_numpy(rng.normal(size=(200, 10)))
    targets = torch.from_numpy(rng.integers(0, 10, 200))
    ours = topk_correct(scores, targets, ks=(1, 3, 5))
    top5 = scores.topk(5, dim=1).indices
    for k in (1, 3, 5):
        assert ours[k] == slow_topk_correct(scores.tolist(), targets.tolist(), k)
        assert ours[k] == int((top5[:, :k] == targets[:, None]).any(dim=1).sum())
    accuracy = topk_accuracy(scores.numpy(), targets.numpy())  # numpy input too
    assert accuracy == {1: ours[1] / 200, 5: ours[5] / 200}
    assert 0 < accuracy[1] < accuracy[5] < 1


def test_ties_and_nan_count_against_the_sample():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, (300, 6)).astype(np.float32)  # many ties
    targets = rng.integers(0, 6, 300)
    ours = topk_correct(scores, targets, ks=(1, 2, 5))
    for k in (1, 2, 5):
        assert ours[k] == slow_topk_correct(scores.tolist(), targets.tolist(), k)
    # an untrained model scoring every class the same gets nothing right below k = C
    assert topk_correct(np.zeros((50, 6)), targets[:50], ks=(1, 5)) == {1: 0, 5: 0}
    nan_scores = torch.tensor([[math.nan, 0.0, -1.0], [2.0, math.nan, 1.0], [2.0, 1.0, 0.0]])
    assert topk_correct(nan_scores, torch.tensor([0, 0, 0]), ks=(1, 2)) == {1: 1, 2: 2}


def test_k_not_below_the_number_of_classes_is_left_out_or_refused():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])
    targets = torch.tensor([1, 2])
    assert topk_correct(scores, targets, ks=(1, 5)) == {1: 1}
    assert topk_accuracy(scores, targets) == {1: 0.5}  # no top-5 of 3 classes, rather than a meaningless 1.0
    with pytest.raises(ValueError, match="every k is at least the number of classes"):
        topk_accuracy(scores, targets, ks=(3, 5))
    with pytest.raises(ValueError, match="k >= 1"):
        topk_correct(scores, targets, ks=(0,))
    with pytest.raises(ValueError, match="outside 0..2"):
        topk_correct(scores, torch.tensor([1, 3]))
    with pytest.raises(ValueError, match="undefined"):
        topk_accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), ks=(1,))


def test_confusion_matrix_matches_a_loop_with_rows_true_and_columns_predicted():
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(500, 7))
    targets = rng.integers(0, 7, 500)
    predictions = scores.argmax(axis=1)
    matrix = class_confusion_matrix(torch.from_numpy(targets), torch.from_numpy(predictions), 7)
    assert matrix.shape == (7, 7) and matrix.dtype == np.int64
    assert matrix.tolist() == slow_confusion(targets.tolist(), predictions.tolist(), 7)
    assert int(np.trace(matrix)) == topk_correct(scores, targets, ks=(1,))[1]
    assert class_confusion_matrix([0, 0, 1], [1, 1, 1], 2).tolist() == [[0, 2], [0, 1]]  # orientation
    with pytest.raises(ValueError, match="prediction class is outside"):
        class_confusion_matrix([0, 1], [0, 2], 2)
    with pytest.raises(ValueError, match="2 targets but 1 predictions"):
        class_confusion_matrix([0, 1], [0], 2)


@pytest.mark.parametrize("num_classes", [4, 80])
def test_confusion_figure_renders_with_rows_normalised(num_classes):
    rng = np.random.default_rng(3)
    targets = rng.integers(0, num_classes, 400)
    predictions = np.where(rng.random(400) < 0.6, targets, rng.integers(0, num_classes, 400))
    matrix = class_confusion_matrix(targets, predictions, num_classes)
    names = [f"class{i}" for i in range(num_classes)]
    fig = class_confusion_figure(matrix, names)
    shown = np.asarray(fig.axes[0].images[0].get_array())
    present = matrix.sum(axis=1) > 0
    np.testing.assert_allclose(shown.sum(axis=1)[present], 1.0)
    np.testing.assert_allclose(shown, matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=40)
    assert Image.open(io.BytesIO(buffer.getvalue())).format == "PNG"
    raw = class_confusion_figure(matrix, names, normalize=False)
    np.testing.assert_array_equal(np.asarray(raw.axes[0].images[0].get_array()), matrix)
    with pytest.raises(ValueError, match="expected"):
        class_confusion_figure(matrix, names[:-1])
