"""The region loss against a direct, loop-by-loop port of Darknet's forward_region_layer (region_layer.c).

The port below follows pjreddie's C code (line numbers: src/region_layer.c at HEAD f6afaabc) loop for loop: its
loops over images, cells, anchors and the truth buffer (at most 30 rows, stopping at the first row with x == 0),
``get_region_box``, ``delta_region_box``, ``delta_region_class``, the 12800-image prior, bias_match, rescore. It
produces the delta that reaches the previous layer, target - prediction times the logistic gradient s(1 - s) for
x, y and objectness: the YOLOv2 release (c6afc7ff) multiplies by s(1 - s) inside forward_region_layer, HEAD in
backward_region_layer_gpu (region_layer.c:478-494); the numbers are the same. Darknet's SGD adds that delta
(``weights += learning_rate / batch * updates``), i.e. it is the negative gradient of the raw layer input; our loss
is a per-image mean, so its autograd gradient must be ``-delta / B``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.ops import complete_box_iou

from test_hierarchy import darknet_get_hierarchy_probability, darknet_softmax_tree
from yolov2.boxes import efficient_iou_loss, pairwise_box_iou, targets_from_boxes
from yolov2.config import LossConfig
from yolov2.errors import ConfigError, DatasetError
from yolov2.loss import region_loss
from yolov2.wordtree import WordTree

# ------------------------------------------------------------------------------------------------------------
# Darknet port (slow, plain Python floats; x is indexed [b, n, entry, j, i])
# ------------------------------------------------------------------------------------------------------------


MAX_TRUTHS = 30  # region_layer.c:33 l.truths = 30*(l.coords + 1); loops t < 30 (lines 238, 265); cfg "max" = 30


def _logistic(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _overlap(x1: float, w1: float, x2: float, w2: float) -> float:
    left = max(x1 - w1 / 2, x2 - w2 / 2)
    right = min(x1 + w1 / 2, x2 + w2 / 2)
    return right - left


def _box_iou(a: tuple, b: tuple) -> float:
    """box.c box_iou on (x, y, w, h) centre boxes."""
    w = _overlap(a[0], a[2], b[0], b[2])
    h = _overlap(a[1], a[3], b[1], b[3])
    inter = 0.0 if (w < 0 or h < 0) else w * h
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _get_region_box(x, biases, n, b, i, j, w, h):
    """region_layer.c:76-84, x and y through the logistic (applied in the forward pass, region_layer.c:167)."""
    return (
        (i + _logistic(x[b, n, 0, j, i])) / w,
        (j + _logistic(x[b, n, 1, j, i])) / h,
        math.exp(x[b, n, 2, j, i]) * biases[n][0] / w,
        math.exp(x[b, n, 3, j, i]) * biases[n][1] / h,
    )


def _delta_region_box(truth, x, biases, n, b, i, j, w, h, delta, scale):
    """region_layer.c:86-101, times the logistic gradient for x and y (region_layer.c:484)."""
    pred = _get_region_box(x, biases, n, b, i, j, w, h)
    iou = _box_iou(pred, truth)
    tx = truth[0] * w - i
    ty = truth[1] * h - j
    tw = math.log(truth[2] * w / biases[n][0])
    th = math.log(truth[3] * h / biases[n][1])
    sx = _logistic(x[b, n, 0, j, i])
    sy = _logistic(x[b, n, 1, j, i])
    delta[b, n, 0, j, i] = scale * (tx - sx) * (sx * (1 - sx))
    delta[b, n, 1, j, i] = scale * (ty - sy) * (sy * (1 - sy))
    delta[b, n, 2, j, i] = scale * (tw - x[b, n, 2, j, i])
    delta[b, n, 3, j, i] = scale * (th - x[b, n, 3, j, i])
    return iou


def _class_probs(x, n, b, i, j, classes, hier=None) -> list[float]:
    """The class entries after Darknet's forward: one softmax (blas.c:305-321), or one per sibling group of the
    tree (``softmax_tree``, blas_kernels.cu:959-987)."""
    logits = [x[b, n, 5 + c, j, i] for c in range(classes)]
    if hier is not None:
        return darknet_softmax_tree(logits, hier)
    top = max(logits)
    exps = [math.exp(v - top) for v in logits]
    return [e / sum(exps) for e in exps]


def _delta_region_class(x, delta, n, b, i, j, class_id, classes, scale, hier=None):
    """region_layer.c:112-138: softmax=1 so tag = !l.softmax = 0; with a tree, the hierarchical branch (each group
    on the label's path: 0 - p, the path node 1 - p)."""
    probs = _class_probs(x, n, b, i, j, classes, hier)
    if hier is None:
        for c in range(classes):
            delta[b, n, 5 + c, j, i] = scale * ((1.0 if c == class_id else 0.0) - probs[c])
        return
    while class_id >= 0:
        group = hier.group_of[class_id]
        offset = hier.group_offsets[group]
        for k in range(hier.group_sizes[group]):
            delta[b, n, 5 + offset + k, j, i] = scale * (0 - probs[offset + k])
        delta[b, n, 5 + class_id, j, i] = scale * (1 - probs[class_id])
        class_id = hier.parents[class_id]


def _class_only_delta(x, delta, b, truth, classes, hier, object_scale, noobject_scale, class_scale, push):
    """The classification-only branch of forward_region_layer (YOLO9000, January 2017): every prediction gets the
    no-object delta; the one with the highest objectness x P(class) (Darknet's ``p > maxp`` from 0) gets the class
    delta and, if its objectness is under .3, the delta up to .3 (``push``; later Darknet sets it to 0)."""
    _, num, _, lh, lw = x.shape
    class_id = int(truth[4])
    maxp, best = 0.0, (0, 0, 0)
    for n in range(num):  # Darknet's n over l.n*l.w*l.h: anchor, row, column
        for j in range(lh):
            for i in range(lw):
                so = _logistic(x[b, n, 4, j, i])
                delta[b, n, 4, j, i] = noobject_scale * ((0 - so) * (so * (1 - so)))
                probs = _class_probs(x, n, b, i, j, classes, hier)
                p = so * (probs[class_id] if hier is None else darknet_get_hierarchy_probability(probs, hier, class_id))
                if p > maxp:
                    maxp, best = p, (n, j, i)
    n, j, i = best
    _delta_region_class(x, delta, n, b, i, j, class_id, classes, class_scale, hier)
    so = _logistic(x[b, n, 4, j, i])
    delta[b, n, 4, j, i] = object_scale * (0.3 - so) * (so * (1 - so)) if push and so < 0.3 else 0.0


def darknet_region_delta(
    x: np.ndarray,
    truths: list[list[tuple]],
    biases: list[tuple[float, float]],
    classes: int,
    seen: int,
    *,
    thresh=0.6,
    object_scale=5.0,
    noobject_scale=1.0,
    class_scale=1.0,
    coord_scale=1.0,
    rescore=True,
    coord_wh_weight=False,
    hier=None,
    class_only_push=True,
):
    """forward_region_layer's delta. truths[b]: image b's Darknet truth buffer, MAX_TRUTHS rows (x, y, w, h, class)
    as the loader fills it (packed, then rows of zeros); the loops stop at the first row with x == 0.

    ``coord_wh_weight`` switches on pjreddie's call ``delta_region_box(..., l.coord_scale * (2 - truth.w*truth.h))``,
    present since commit 60e952ba (2017-03-26) and at HEAD (region_layer.c:293), not in the YOLOv2 release.
    ``hier``: the WordTree of ``[region] tree=``. A truth row with x and y above 100000 is Darknet's
    classification-only truth (:func:`_class_only_delta`); its image takes nothing else.
    Returns (delta, stats) with counts of ignored predictions and overwritten truths, so the tests can check that
    those paths were exercised.
    """
    batch, num, _, lh, lw = x.shape
    delta = np.zeros_like(x)
    ignored = 0
    slots: dict[tuple, int] = {}
    overwritten = 0
    for b in range(batch):
        only = [t for t in truths[b] if t[0] > 100000 and t[1] > 100000]
        if only:
            _class_only_delta(
                x, delta, b, only[0], classes, hier, object_scale, noobject_scale, class_scale, class_only_push
            )
            continue
        for j in range(lh):
            for i in range(lw):
                for n in range(num):
                    pred = _get_region_box(x, biases, n, b, i, j, lw, lh)
                    best_iou = 0.0
                    for t in range(MAX_TRUTHS):  # region_layer.c:238-245
                        truth = truths[b][t]
                        if not truth[0]:
                            break
                        iou = _box_iou(pred, truth[:4])
                        if iou > best_iou:
                            best_iou = iou
                    so = _logistic(x[b, n, 4, j, i])
                    delta[b, n, 4, j, i] = noobject_scale * ((0 - so) * (so * (1 - so)))
                    if best_iou > thresh:
                        delta[b, n, 4, j, i] = 0
                        ignored += 1
                    if seen < 12800:  # region_layer.c:254-261
                        truth = ((i + 0.5) / lw, (j + 0.5) / lh, biases[n][0] / lw, biases[n][1] / lh)
                        _delta_region_box(truth, x, biases, n, b, i, j, lw, lh, delta, 0.01)
        for t in range(MAX_TRUTHS):  # region_layer.c:265-317
            truth = truths[b][t]
            if not truth[0]:
                break
            best_iou = 0.0
            best_n = 0
            i = int(truth[0] * lw)
            j = int(truth[1] * lh)
            truth_shift = (0.0, 0.0, truth[2], truth[3])
            for n in range(num):
                pred = (0.0, 0.0, biases[n][0] / lw, biases[n][1] / lh)  # bias_match=1
                iou = _box_iou(pred, truth_shift)
                if iou > best_iou:
                    best_iou = iou
                    best_n = n
            scale = coord_scale * (2 - truth[2] * truth[3]) if coord_wh_weight else coord_scale
            iou = _delta_region_box(truth[:4], x, biases, best_n, b, i, j, lw, lh, delta, scale)
            so = _logistic(x[b, best_n, 4, j, i])
            delta[b, best_n, 4, j, i] = object_scale * (1 - so) * (so * (1 - so))
            if rescore:
                delta[b, best_n, 4, j, i] = object_scale * (iou - so) * (so * (1 - so))
            _delta_region_class(x, delta, best_n, b, i, j, int(truth[4]), classes, class_scale, hier)
            key = (b, best_n, j, i)
            overwritten += key in slots
            slots[key] = 1
    return delta, {"ignored": ignored, "overwritten": overwritten}


# ------------------------------------------------------------------------------------------------------------
# Random but pointed test cases
# ------------------------------------------------------------------------------------------------------------

ANCHORS = [(0.6, 0.8), (1.5, 1.9), (2.3, 3.7), (4.4, 2.2), (5.2, 4.6)]  # grid cells


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _make_case(seed: int, batch: int = 3, num_classes: int = 4, grid_h: int = 6, grid_w: int = 7):
    """Outputs (float64, B x A*(5+C) x H x W) and padded targets (B x T x 5) with: several boxes per image, two
    truths sharing a cell and an anchor, a truth sharing only a cell, an image without boxes, padding in the
    middle, and some predictions placed on truths so that the ignore threshold fires."""
    gen = torch.Generator().manual_seed(seed)
    num_anchors = len(ANCHORS)
    out = torch.randn(batch, num_anchors, 5 + num_classes, grid_h, grid_w, generator=gen, dtype=torch.float64)
    num_truths = 7
    targets = torch.full((batch, num_truths, 5), -1.0, dtype=torch.float64)

    def rand(lo, hi):
        return lo + (hi - lo) * torch.rand((), generator=gen, dtype=torch.float64).item()

    for b in range(batch):
        if b == 1:
            continue  # an image without boxes
        count = 5 if b == 0 else 4
        rows = []
        for _ in range(count):
            rows.append(
                [
                    float(torch.randint(num_classes, (), generator=gen)),
                    rand(0.02, 0.98),
                    rand(0.02, 0.98),
                    rand(0.05, 0.7),
                    rand(0.05, 0.7),
                ]
            )
        # the second box: same cell, nearly the same shape as the first -> same cell AND anchor (overwrite)
        cell_x = math.floor(rows[0][1] * grid_w)
        cell_y = math.floor(rows[0][2] * grid_h)
        rows[1][1] = (cell_x + rand(0.05, 0.95)) / grid_w
        rows[1][2] = (cell_y + rand(0.05, 0.95)) / grid_h
        rows[1][3] = rows[0][3] * rand(0.97, 1.03)
        rows[1][4] = rows[0][4] * rand(0.97, 1.03)
        # the third box: same cell as the first, very different shape -> another anchor of the same cell
        rows[2][1] = (cell_x + rand(0.05, 0.95)) / grid_w
        rows[2][2] = (cell_y + rand(0.05, 0.95)) / grid_h
        rows[2][3] = 0.9 * ANCHORS[0][0] / grid_w if rows[0][3] * grid_w > 2 else 0.9 * ANCHORS[4][0] / grid_w
        rows[2][4] = 0.9 * ANCHORS[0][1] / grid_h if rows[0][3] * grid_w > 2 else 0.9 * ANCHORS[4][1] / grid_h
        positions = list(range(count)) if b == 0 else [0, 1, 3, 5]  # image 2: padding rows in between
        for pos, row in zip(positions, rows):
            targets[b, pos] = torch.tensor(row, dtype=torch.float64)
        # place a prediction of a neighbouring anchor onto each truth: IoU ~1 > thresh -> its noobj is ignored
        for row in rows[3:]:
            i = math.floor(row[1] * grid_w)
            j = math.floor(row[2] * grid_h)
            n = int(torch.randint(num_anchors, (), generator=gen))
            out[b, n, 0, j, i] = _logit(row[1] * grid_w - i)
            out[b, n, 1, j, i] = _logit(row[2] * grid_h - j)
            out[b, n, 2, j, i] = math.log(row[3] * grid_w / ANCHORS[n][0]) + 0.01
            out[b, n, 3, j, i] = math.log(row[4] * grid_h / ANCHORS[n][1]) - 0.01
    output = out.view(batch, num_anchors * (5 + num_classes), grid_h, grid_w).clone()
    return output, targets, torch.tensor(ANCHORS, dtype=torch.float64), num_classes


def _darknet_truths(targets: torch.Tensor, class_only: torch.Tensor | None = None) -> list[list[tuple]]:
    """Our padded rows [label, cx, cy, w, h] -> Darknet's truth buffer per image: the real rows (x, y, w, h, class)
    in order, packed, then rows of zeros up to MAX_TRUTHS, as data.c fill_truth_detection (HEAD, lines 458-485)
    leaves it. Real rows are the ones region_loss keeps (label >= 0, w > 0, h > 0); more than MAX_TRUTHS is an
    error here, since Darknet would never see the rest."""
    truths = []
    for b, image in enumerate(targets.tolist()):
        if class_only is not None and bool(class_only[b]):
            label = next(row[0] for row in image if row[0] >= 0)
            truths.append([(1e6, 1e6, 1.0, 1.0, label)] + [(0.0, 0.0, 0.0, 0.0, 0.0)] * (MAX_TRUTHS - 1))
            continue
        rows = [(x, y, w, h, label) for label, x, y, w, h in image if label >= 0 and w > 0 and h > 0]
        if len(rows) > MAX_TRUTHS:
            raise ValueError(f"{len(rows)} truths in one image; Darknet's region layer reads at most {MAX_TRUTHS}")
        truths.append(rows + [(0.0, 0.0, 0.0, 0.0, 0.0)] * (MAX_TRUTHS - len(rows)))
    return truths


def _reference_grad(output, targets, anchors, num_classes, seen, class_only=None, **kwargs):
    batch, _, grid_h, grid_w = output.shape
    x = output.detach().numpy().reshape(batch, len(ANCHORS), 5 + num_classes, grid_h, grid_w)
    truths = _darknet_truths(targets, class_only)
    delta, stats = darknet_region_delta(x, truths, ANCHORS, num_classes, seen, **kwargs)
    return torch.from_numpy(-delta / batch).view_as(output), stats


# ------------------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "seen", "rescore"),
    [(0, 0, True), (1, 12800, True), (2, 640, False), (3, 50000, False)],
)
def test_gradients_equal_darknet_deltas(seed, seen, rescore):
    output, targets, anchors, num_classes = _make_case(seed)
    output.requires_grad_(True)
    result = region_loss(output, targets, anchors, num_classes, seen, LossConfig(rescore=rescore))
    result.total.backward()
    expected, stats = _reference_grad(output, targets, anchors, num_classes, seen, rescore=rescore)
    assert stats["ignored"] >= 2, "the case must exercise the ignore threshold"
    assert stats["overwritten"] >= 2, "the case must exercise truths overwriting a shared cell+anchor"
    torch.testing.assert_close(output.grad, expected, rtol=1e-5, atol=1e-9)


def test_gradients_with_non_default_scales_and_wh_weight():
    output, targets, anchors, num_classes = _make_case(4, batch=2, num_classes=3, grid_h=5, grid_w=5)
    scales = dict(thresh=0.5, object_scale=3.0, noobject_scale=0.7, class_scale=2.0, coord_scale=1.5)
    output.requires_grad_(True)
    region_loss(output, targets, anchors, num_classes, 100, LossConfig(coord_wh_weight=True, **scales)).total.backward()
    expected, _ = _reference_grad(output, targets, anchors, num_classes, 100, coord_wh_weight=True, **scales)
    torch.testing.assert_close(output.grad, expected, rtol=1e-5, atol=1e-9)


def test_port_reads_the_truth_buffer_like_darknet():
    """The port stops at the first truth row with x == 0 (region_layer.c:240, 268), as Darknet does; the YOLOv2
    release's loader (data.c fill_truth_detection at c6afc7ff) left such a row in the middle for boxes under
    0.01, hiding the truths after it. Our targets (padding anywhere) go through _darknet_truths, which packs."""
    output, targets, anchors, num_classes = _make_case(12, batch=1)
    batch, _, grid_h, grid_w = output.shape
    x = output.numpy().reshape(batch, len(ANCHORS), 5 + num_classes, grid_h, grid_w)
    (packed,) = _darknet_truths(targets)
    holed = [packed[:2] + [(0.0, 0.0, 0.0, 0.0, 0.0)] + packed[2:-1]]
    first_two = [packed[:2] + [(0.0, 0.0, 0.0, 0.0, 0.0)] * (MAX_TRUTHS - 2)]
    got, _ = darknet_region_delta(x, holed, ANCHORS, num_classes, 0)
    expected, _ = darknet_region_delta(x, first_two, ANCHORS, num_classes, 0)
    np.testing.assert_array_equal(got, expected)
    full, _ = darknet_region_delta(x, [packed], ANCHORS, num_classes, 0)
    assert not np.array_equal(full, expected)


def test_components_sum_to_total_and_own_their_channels():
    output, targets, anchors, num_classes = _make_case(5)
    batch, _, grid_h, grid_w = output.shape
    expected, _ = _reference_grad(output, targets, anchors, num_classes, 0)
    expected = expected.view(batch, len(ANCHORS), 5 + num_classes, grid_h, grid_w)
    output.requires_grad_(True)
    result = region_loss(output, targets, anchors, num_classes, 0)
    parts = result.coord + result.obj + result.noobj + result.prior + result.cls
    torch.testing.assert_close(result.total, parts)
    owners = ((("coord", "prior"), slice(0, 4)), (("obj", "noobj"), slice(4, 5)), (("cls",), slice(5, None)))
    for part_names, channels in owners:
        part = sum(getattr(result, name) for name in part_names)
        (grad,) = torch.autograd.grad(part, output, retain_graph=True)
        grad = grad.view_as(expected)
        torch.testing.assert_close(grad[:, :, channels], expected[:, :, channels], rtol=1e-5, atol=1e-9)
        others = torch.ones(5 + num_classes, dtype=torch.bool)
        others[channels] = False
        assert torch.count_nonzero(grad[:, :, others]) == 0, f"{part_names} leaks into other channels"
    late = region_loss(output, targets, anchors, num_classes, 12800)
    assert late.prior.item() == 0.0 and result.prior.item() > 0.0


def test_no_truths_at_all_gives_noobj_and_prior_only():
    output, _, anchors, num_classes = _make_case(6, batch=2)
    targets = torch.full((2, 0, 5), -1.0, dtype=torch.float64)
    output.requires_grad_(True)
    result = region_loss(output, targets, anchors, num_classes, 0)
    result.total.backward()
    expected, _ = _reference_grad(output, torch.full((2, 1, 5), -1.0, dtype=torch.float64), anchors, num_classes, 0)
    torch.testing.assert_close(output.grad, expected, rtol=1e-5, atol=1e-9)
    assert result.coord.item() == result.obj.item() == result.cls.item() == 0.0


def test_float32_output_matches_float64():
    output, targets, anchors, num_classes = _make_case(7)
    r64 = region_loss(output, targets, anchors, num_classes, 0)
    r32 = region_loss(output.float(), targets.float(), anchors.float(), num_classes, 0)
    assert r32.total.dtype == torch.float32
    torch.testing.assert_close(r32.total.double(), r64.total, rtol=1e-4, atol=1e-5)


def test_bad_inputs_raise_specific_errors():
    output, targets, anchors, num_classes = _make_case(8)
    with pytest.raises(ConfigError, match="channels"):
        region_loss(output, targets, anchors, num_classes + 1, 0)
    bad = targets.clone()
    bad[0, 0, 0] = num_classes
    with pytest.raises(DatasetError, match="num_classes"):
        region_loss(output, bad, anchors, num_classes, 0)
    with pytest.raises(ConfigError, match="modern"):
        region_loss(output, targets, anchors, num_classes, 0, LossConfig(box_loss="ciou"))


def _perfect_output(targets, anchors, num_classes, grid_h, grid_w):
    """Raw outputs that decode exactly to every truth at its responsible slot (first truth per slot is fine,
    the overwrite leaves the last one, so write them in order) and predict no object elsewhere."""
    batch = targets.shape[0]
    num_anchors = anchors.shape[0]
    out = torch.zeros(batch, num_anchors, 5 + num_classes, grid_h, grid_w, dtype=torch.float64)
    out[:, :, 4] = -8.0
    for b in range(batch):
        for label, cx, cy, w, h in targets[b].tolist():
            if label < 0:
                continue
            i, j = math.floor(cx * grid_w), math.floor(cy * grid_h)
            shape = torch.tensor([[w * grid_w, h * grid_h]], dtype=torch.float64)
            inter = torch.minimum(shape, anchors).prod(1)
            n = int((inter / (shape.prod(1) + anchors.prod(1) - inter)).argmax())
            out[b, n, 0, j, i] = _logit(min(max(cx * grid_w - i, 1e-3), 1 - 1e-3))
            out[b, n, 1, j, i] = _logit(min(max(cy * grid_h - j, 1e-3), 1 - 1e-3))
            out[b, n, 2, j, i] = math.log(w * grid_w / anchors[n, 0].item())
            out[b, n, 3, j, i] = math.log(h * grid_h / anchors[n, 1].item())
            out[b, n, 4, j, i] = 8.0
            out[b, n, 5:, j, i] = -8.0
            out[b, n, 5 + int(label), j, i] = 8.0
    return out.view(batch, -1, grid_h, grid_w)


@pytest.mark.parametrize("box_loss", ["mse", "ciou", "eiou"])
def test_modern_mode_is_finite_and_decreases_towards_targets(box_loss):
    output, targets, anchors, num_classes = _make_case(9)
    _, _, grid_h, grid_w = output.shape
    perfect = _perfect_output(targets, anchors, num_classes, grid_h, grid_w)
    values = []
    for alpha in (0.0, 0.5, 0.9, 1.0):
        moved = (output + alpha * (perfect - output)).requires_grad_(True)
        result = region_loss(moved, targets, anchors, num_classes, 20000, LossConfig(mode="modern", box_loss=box_loss))
        result.total.backward()
        assert torch.isfinite(result.total) and torch.isfinite(moved.grad).all()
        values.append(result.total.item())
    assert values[0] > values[1] > values[2] > values[3], values


def test_modern_ciou_term_matches_torchvision_ciou():
    """One truth, one image: the box term is coord_scale * (1 - CIoU) of the decoded box in grid units."""
    grid = 5
    anchors = torch.tensor(ANCHORS, dtype=torch.float64)
    gen = torch.Generator().manual_seed(10)
    output = torch.randn(1, 5 * 7, grid, grid, generator=gen, dtype=torch.float64)
    targets = torch.tensor([[[1.0, 0.45, 0.62, 0.3, 0.5]]], dtype=torch.float64)
    result = region_loss(
        output, targets, anchors, 2, 20000, LossConfig(mode="modern", box_loss="ciou", coord_scale=2.0)
    )
    i, j = 2, 3  # floor(0.45*5), floor(0.62*5)
    n = 1  # shape (1.5, 2.5) cells: IoU 0.13, 0.76, 0.44, ... with ANCHORS -> (1.5, 1.9)
    raw = output.view(1, 5, 7, grid, grid)[0, n, :4, j, i]
    cx, cy = i + torch.sigmoid(raw[0]), j + torch.sigmoid(raw[1])
    w, h = ANCHORS[n][0] * torch.exp(raw[2]), ANCHORS[n][1] * torch.exp(raw[3])
    pred = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])[None]
    truth = torch.tensor([[2.25 - 0.75, 3.1 - 1.25, 2.25 + 0.75, 3.1 + 1.25]], dtype=torch.float64)
    torch.testing.assert_close(result.coord, 2.0 * (1 - complete_box_iou(pred, truth)[0, 0]))


def test_efficient_iou_loss_against_hand_formula():
    a = torch.tensor([[1.0, 2.0, 4.0, 7.0]], dtype=torch.float64)
    b = torch.tensor([[2.0, 1.0, 6.0, 5.0]], dtype=torch.float64)
    inter = (4 - 2) * (5 - 2)
    iou = inter / (3 * 5 + 4 * 4 - inter)
    cw, ch = 6 - 1, 7 - 1
    centre = (2.5 - 4.0) ** 2 + (4.5 - 3.0) ** 2
    expected = 1 - iou + centre / (cw**2 + ch**2) + (3 - 4) ** 2 / cw**2 + (5 - 4) ** 2 / ch**2
    torch.testing.assert_close(efficient_iou_loss(a, b), torch.tensor([expected], dtype=torch.float64))


def test_pairwise_box_iou_matches_torchvision_per_image():
    from torchvision.ops import box_iou

    gen = torch.Generator().manual_seed(11)
    xy = torch.rand(3, 9, 2, generator=gen)
    b1 = torch.cat([xy, xy + torch.rand(3, 9, 2, generator=gen)], -1)
    xy = torch.rand(3, 4, 2, generator=gen)
    b2 = torch.cat([xy, xy + torch.rand(3, 4, 2, generator=gen)], -1)
    got = pairwise_box_iou(b1, b2)
    for k in range(3):
        torch.testing.assert_close(got[k], box_iou(b1[k], b2[k]))


def test_targets_from_boxes_normalises_and_pads():
    samples = [
        (torch.tensor([[10.0, 20.0, 110.0, 60.0], [0.0, 0.0, 416.0, 320.0]]), torch.tensor([3, 0])),
        (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)),
    ]
    out = targets_from_boxes(samples, input_w=416, input_h=320, max_boxes=3)
    assert out.shape == (2, 3, 5)
    expected_first = [3.0, 60.0 / 416, 40.0 / 320, 100.0 / 416, 40.0 / 320]
    torch.testing.assert_close(out[0, 0], torch.tensor(expected_first))
    torch.testing.assert_close(out[0, 1], torch.tensor([0.0, 0.5, 0.5, 1.0, 1.0]))
    assert (out[0, 2] == -1).all() and (out[1] == -1).all()
    assert targets_from_boxes(samples, 416, 320).shape == (2, 2, 5)
    with pytest.raises(ValueError, match="image 0 has 2 boxes"):
        targets_from_boxes(samples, 416, 320, max_boxes=1)


# ------------------------------------------------------------------------------------------------------------
# YOLO9000: the WordTree class term and classification-only images
# ------------------------------------------------------------------------------------------------------------

# animal, vehicle; dog, cat; car, bus, truck; two kinds of dog: groups [0, 1], [2, 3], [4, 5, 6], [7, 8]
HAND_TREE = WordTree(
    ("animal", "vehicle", "dog", "cat", "car", "bus", "truck", "puppy", "hound"), (-1, -1, 0, 0, 1, 1, 1, 2, 2)
)


@pytest.mark.parametrize(("seed", "seen"), [(4, 0), (5, 20000)])
def test_tree_gradients_equal_darknet_hierarchical_deltas(seed, seen):
    output, targets, anchors, num_classes = _make_case(seed, num_classes=HAND_TREE.num_nodes)
    assert {int(v) for v in targets[..., 0].flatten() if v >= 0} & {0, 1, 2}, "labels must include inner nodes"
    output.requires_grad_(True)
    region_loss(output, targets, anchors, num_classes, seen, tree=HAND_TREE).total.backward()
    expected, _ = _reference_grad(output, targets, anchors, num_classes, seen, hier=HAND_TREE)
    torch.testing.assert_close(output.grad, expected, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("tree", [HAND_TREE, None], ids=["tree", "flat"])
@pytest.mark.parametrize("objectness", ["push", "zero"])
@pytest.mark.parametrize("seen", [0, 20000])
def test_class_only_images_follow_darknets_yolo9000_rule(tree, objectness, seen):
    """Image 1 carries only a label (with a box row whose values must not be read), image 2 as well, among
    detection images; the gradient equals the port's delta everywhere (the tree and flat softmax alike)."""
    output, targets, anchors, num_classes = _make_case(6, num_classes=HAND_TREE.num_nodes)
    targets[1, 2] = torch.tensor([7.0, 0.1, 0.9, 0.0, 0.0], dtype=torch.float64)  # puppy; the box is not read
    class_only = torch.tensor([False, True, True])
    output.requires_grad_(True)
    loss = LossConfig(class_only_objectness=objectness)
    region_loss(output, targets, anchors, num_classes, seen, loss, tree=tree, class_only=class_only).total.backward()
    expected, _ = _reference_grad(
        output, targets, anchors, num_classes, seen, class_only, hier=tree, class_only_push=objectness == "push"
    )
    torch.testing.assert_close(output.grad, expected, rtol=1e-5, atol=1e-9)


def test_class_only_rule_on_a_hand_built_output():
    """The box with the highest objectness x P(label) learns the label: not the most confident box (its P(label)
    is low), its objectness is pushed up to 0.3, no coordinate gradient anywhere, no-object everywhere else."""
    num_anchors, grid = 2, 2
    out = torch.zeros(1, num_anchors, 5 + HAND_TREE.num_nodes, grid, grid, dtype=torch.float64)
    out[0, :, 4] = _logit(0.05)
    out[0, 0, 4, 0, 0] = _logit(0.9)  # the most confident box, but it says "vehicle"
    out[0, 0, 5 + 1, 0, 0] = 6.0
    out[0, 1, 4, 1, 0] = _logit(0.2)  # less confident, but "animal > dog > puppy"
    out[0, 1, 5 + 0, 1, 0] = out[0, 1, 5 + 2, 1, 0] = out[0, 1, 5 + 7, 1, 0] = 6.0
    output = out.view(1, -1, grid, grid).clone().requires_grad_(True)
    targets = torch.tensor([[[7.0, 0.5, 0.5, 1.0, 1.0]]], dtype=torch.float64)
    anchors = torch.tensor(ANCHORS[:num_anchors], dtype=torch.float64)
    result = region_loss(output, targets, anchors, HAND_TREE.num_nodes, 0, tree=HAND_TREE, class_only=torch.ones(1))
    result.total.backward()
    grad = output.grad.view_as(out)
    assert not grad[0, :, :4].any()  # no coordinate (and no prior) gradient
    s = 0.2
    assert grad[0, 1, 4, 1, 0].item() == pytest.approx(-5.0 * (0.3 - s) * s * (1 - s))  # object_scale x (.3 - s)
    others = torch.ones(num_anchors, grid, grid, dtype=torch.bool)
    others[1, 1, 0] = False
    so = torch.sigmoid(out[0, :, 4])
    torch.testing.assert_close(grad[0, :, 4][others], (so * so * (1 - so))[others])  # no-object: s x s(1 - s)
    class_grad = grad[0, :, 5:].permute(0, 2, 3, 1)
    assert class_grad[1, 1, 0].abs().sum() > 0 and class_grad[:, :, :, :].abs().sum() == class_grad[1, 1, 0].abs().sum()
    assert not class_grad[1, 1, 0, [4, 5, 6]].any()  # the vehicle group is off the path
    assert result.avg_iou.item() == 0 and result.recall.item() == 0  # no detection truth to count


def test_tree_and_class_only_inputs_are_checked():
    output, targets, anchors, _ = _make_case(0, num_classes=4)
    with pytest.raises(ConfigError, match="the tree has 9 nodes, the head 4 classes"):
        region_loss(output, targets, anchors, 4, 0, tree=HAND_TREE)
    with pytest.raises(ValueError, match=r"class_only must be \(B=3,\)"):
        region_loss(output, targets, anchors, 4, 0, class_only=torch.zeros(2, dtype=torch.bool))
    with pytest.raises(DatasetError, match="classification-only image has no label"):
        region_loss(output, targets, anchors, 4, 0, class_only=torch.tensor([False, True, False]))
    with pytest.raises(ConfigError, match="class_only_objectness"):
        bad = LossConfig(class_only_objectness="sometimes")  # type: ignore[arg-type]
        region_loss(output, targets, anchors, 4, 0, bad, class_only=torch.tensor([True, False, False]))
