"""Decoding, letterbox undo, batched NMS and top-k against plain per-image, per-box loops and torchvision.ops.nms."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import distance_box_iou, nms

from test_hierarchy import HAND, darknet_hierarchy_predictions, darknet_hierarchy_top_prediction, darknet_softmax_tree
from yolov2.boxes import letterbox_geometry, letterbox_params, pairwise_distance_box_iou
from yolov2.postprocess import batched_diou_nms, decode, postprocess
from yolov2.wordtree import WordTree

ANCHORS = [(1.3221, 1.73145), (3.19275, 4.00944), (5.05587, 8.09892), (9.47112, 4.84053), (11.2364, 10.0071)]


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _loop_decode(
    output: torch.Tensor, anchors: list, num_classes: int, tree: WordTree | None = None, conditional: bool = False
):
    """REFERENCE.md "Location prediction", one prediction at a time. Returns per image a list of
    (xyxy normalised, objectness, class probs) in (anchor, row, column) order. With a tree the class probabilities
    are Darknet's softmax_tree, made absolute by hierarchy_predictions unless ``conditional``."""
    batch, _, grid_h, grid_w = output.shape
    x = output.view(batch, len(anchors), 5 + num_classes, grid_h, grid_w).tolist()
    result = []
    for b in range(batch):
        preds = []
        for a, (pw, ph) in enumerate(anchors):
            for j in range(grid_h):
                for i in range(grid_w):
                    v = [x[b][a][k][j][i] for k in range(5 + num_classes)]
                    bx = (i + _sigmoid(v[0])) / grid_w
                    by = (j + _sigmoid(v[1])) / grid_h
                    bw = pw * math.exp(v[2]) / grid_w
                    bh = ph * math.exp(v[3]) / grid_h
                    if tree is None:
                        exps = [math.exp(s) for s in v[5:]]
                        probs = [e / sum(exps) for e in exps]
                    else:
                        probs = darknet_softmax_tree(v[5:], tree)
                        probs = probs if conditional else darknet_hierarchy_predictions(probs, tree)
                    preds.append(((bx - bw / 2, by - bh / 2, bx + bw / 2, by + bh / 2), _sigmoid(v[4]), probs))
        result.append(preds)
    return result


def _darknet_letterbox(image_w: int, image_h: int, net_w: int, net_h: int) -> tuple[int, int, int, int]:
    """image.c letterbox_image: new size with C int arithmetic, image embedded at ((w-new_w)/2, (h-new_h)/2)."""
    if net_w / image_w < net_h / image_h:
        new_w, new_h = net_w, (image_h * net_w) // image_w
    else:
        new_h, new_w = net_h, (image_w * net_h) // image_h
    return new_w, new_h, (net_w - new_w) // 2, (net_h - new_h) // 2


def _darknet_correct_box(box, image_w: int, image_h: int, net: int) -> list[float]:
    """region_layer.c correct_region_boxes (relative=0): a box xyxy normalised to the network input into
    original-image pixels; the letterbox padding is the float (net - new) / 2., not the pasted integer."""
    new_w, new_h, _, _ = _darknet_letterbox(image_w, image_h, net, net)
    off_x, off_y = (net - new_w) / 2.0, (net - new_h) / 2.0
    x1, y1, x2, y2 = box
    return [
        (x1 * net - off_x) * image_w / new_w,
        (y1 * net - off_y) * image_h / new_h,
        (x2 * net - off_x) * image_w / new_w,
        (y2 * net - off_y) * image_h / new_h,
    ]


def _box_iou(a, b) -> float:
    """box.c box_iou, on xyxy: overlap of the two intervals per axis, 0 when they do not meet."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w < 0 or h < 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _do_nms_sort(boxes, scores, thresh: float) -> list[int]:
    """box.c do_nms_sort for one class: by decreasing score, each surviving box zeroes every later box
    whose IoU with it is above ``thresh``. Returns the indices that keep a non-zero score."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    prob = [scores[i] for i in order]
    for i in range(len(order)):
        if prob[i] == 0:
            continue
        for j in range(i + 1, len(order)):
            if _box_iou(boxes[order[i]], boxes[order[j]]) > thresh:
                prob[j] = 0
    return [order[i] for i in range(len(order)) if prob[i] != 0]


def _random_output(seed: int, batch: int, num_classes: int, grid: int, spread: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    out = torch.randn(batch, len(ANCHORS), 5 + num_classes, grid, grid, generator=gen, dtype=torch.float64)
    out[:, :, 2:4] *= 0.5 * spread
    out[:, :, 5:] *= 3.0
    out[:, :, 4] += 1.0
    return out.view(batch, -1, grid, grid)


def test_decode_matches_loop():
    output = _random_output(0, batch=2, num_classes=3, grid=4)
    boxes, objectness, probs = decode(output, torch.tensor(ANCHORS, dtype=torch.float64), 3)
    reference = _loop_decode(output, ANCHORS, 3)
    assert boxes.shape == (2, 5 * 16, 4) and objectness.shape == (2, 80) and probs.shape == (2, 80, 3)
    for b, preds in enumerate(reference):
        torch.testing.assert_close(boxes[b], torch.tensor([p[0] for p in preds], dtype=torch.float64))
        torch.testing.assert_close(objectness[b], torch.tensor([p[1] for p in preds], dtype=torch.float64))
        torch.testing.assert_close(probs[b], torch.tensor([p[2] for p in preds], dtype=torch.float64))


def test_letterbox_geometry_matches_darknet_letterbox_image():
    gen = torch.Generator().manual_seed(1)
    sizes = torch.randint(20, 2000, (300, 2), generator=gen)
    sizes[:3] = torch.tensor([[416, 416], [640, 480], [480, 640]])
    for net_w, net_h in ((416, 416), (608, 320)):
        new_wh, pad = letterbox_geometry(sizes, net_w, net_h)
        for (w, h), got_new, got_pad in zip(sizes.tolist(), new_wh.tolist(), pad.tolist()):
            assert (*got_new, *got_pad) == _darknet_letterbox(w, h, net_w, net_h), (w, h)
    assert letterbox_params(640, 480, 416, 416) == (416, 312, 0, 52)


def _output_for_boxes(net_boxes_norm, labels, num_classes: int, grid: int) -> torch.Tensor:
    """Raw outputs whose decoded box at (its centre cell, anchor 0) is exactly each given box (xyxy normalised
    to the network input), confident in its label; every other prediction has objectness ~0."""
    batch = len(net_boxes_norm)
    out = torch.zeros(batch, len(ANCHORS), 5 + num_classes, grid, grid, dtype=torch.float64)
    out[:, :, 4] = -30.0
    for b, (image_boxes, image_labels) in enumerate(zip(net_boxes_norm, labels)):
        for (x1, y1, x2, y2), label in zip(image_boxes, image_labels):
            cx, cy = (x1 + x2) / 2 * grid, (y1 + y2) / 2 * grid
            i, j = int(cx), int(cy)
            fx, fy = cx - i, cy - j
            out[b, 0, 0, j, i] = math.log(fx / (1 - fx))
            out[b, 0, 1, j, i] = math.log(fy / (1 - fy))
            out[b, 0, 2, j, i] = math.log((x2 - x1) * grid / ANCHORS[0][0])
            out[b, 0, 3, j, i] = math.log((y2 - y1) * grid / ANCHORS[0][1])
            out[b, 0, 4, j, i] = 30.0
            out[b, 0, 5 + label, j, i] = 30.0
    return out.view(batch, -1, grid, grid)


@pytest.mark.parametrize("letterbox", [True, False])
def test_boxes_map_back_to_the_original_image(letterbox):
    """Boxes drawn on originals, moved into the network input as the letterbox (or resize) does, encoded as
    raw outputs, then postprocessed, come back as the original pixel boxes."""
    net = 416
    grid = net // 32
    image_sizes = [(640, 480), (333, 500)]
    originals = [
        [(100.0, 60.0, 300.0, 400.0), (420.5, 10.0, 630.0, 200.25)],
        [(20.0, 30.0, 200.0, 250.0)],
    ]
    labels = [[2, 0], [1]]
    net_boxes = []
    for (w, h), boxes in zip(image_sizes, originals):
        if letterbox:  # correct_region_boxes' inverse: the float padding (333 x 500 has an odd one, 69.5)
            new_w, new_h, _, _ = _darknet_letterbox(w, h, net, net)
            sx, sy, pad_x, pad_y = new_w / w, new_h / h, (net - new_w) / 2, (net - new_h) / 2
        else:
            sx, sy, pad_x, pad_y = net / w, net / h, 0, 0
        net_boxes.append(
            [
                ((x1 * sx + pad_x) / net, (y1 * sy + pad_y) / net, (x2 * sx + pad_x) / net, (y2 * sy + pad_y) / net)
                for x1, y1, x2, y2 in boxes
            ]
        )
    output = _output_for_boxes(net_boxes, labels, num_classes=3, grid=grid)
    dets = postprocess(
        output,
        torch.tensor(ANCHORS, dtype=torch.float64),
        3,
        (net, net),
        torch.tensor(image_sizes),
        letterbox=letterbox,
        conf_thresh=0.5,
    )
    for det, boxes, image_labels in zip(dets, originals, labels):
        order = torch.argsort(det.boxes[:, 0])
        expected = torch.tensor(sorted(boxes), dtype=torch.float64)
        torch.testing.assert_close(det.boxes[order], expected, rtol=0, atol=1e-6)
        assert sorted(det.labels.tolist()) == sorted(image_labels)
        assert torch.all(det.scores > 0.99)


def _reference_postprocess(
    output, num_classes, net_size, image_sizes, conf, iou, max_det, max_candidates=None, tree=None, tree_classes=None
):
    """Darknet's order, per image and class: loop-decoded boxes, letterbox undone as correct_region_boxes does,
    threshold, do_nms_sort on the unclipped boxes, then clipped (print_detector_detections); merged by score
    and cut at max_det. ``max_candidates``: only the image's best (box, class) pairs by score enter NMS.
    ``tree_classes``: the classes are those tree nodes, each scored by its absolute probability."""
    decoded = _loop_decode(output, ANCHORS, num_classes, tree)
    if tree_classes is not None:
        decoded = [[(box, obj, [probs[k] for k in tree_classes]) for box, obj, probs in preds] for preds in decoded]
        num_classes = len(tree_classes)
    results = []
    for preds, (w, h) in zip(decoded, image_sizes):
        boxes = [_darknet_correct_box(box, w, h, net_size) for box, _, _ in preds]
        all_scores = sorted((obj * probs[c] for _, obj, probs in preds for c in range(num_classes)), reverse=True)
        floor = all_scores[max_candidates - 1] if max_candidates is not None else -1.0
        rows = []
        for c in range(num_classes):
            scores = [float(obj * probs[c]) for _, obj, probs in preds]
            idx = [i for i, score in enumerate(scores) if score > conf and score >= floor]
            for k in _do_nms_sort([boxes[i] for i in idx], [scores[i] for i in idx], iou):
                x1, y1, x2, y2 = boxes[idx[k]]
                clipped = [min(max(x1, 0), w), min(max(y1, 0), h), min(max(x2, 0), w), min(max(y2, 0), h)]
                rows.append((scores[idx[k]], c, clipped))
        rows.sort(key=lambda r: -r[0])
        results.append(rows[:max_det])
    return results


def _assert_detections_are(det, rows) -> None:
    """One image's detections against the reference's rows (score, label, clipped box), in order."""
    torch.testing.assert_close(det.scores, torch.tensor([r[0] for r in rows], dtype=torch.float64))
    assert det.labels.tolist() == [r[1] for r in rows]
    torch.testing.assert_close(det.boxes, torch.tensor([r[2] for r in rows], dtype=torch.float64).reshape(-1, 4))


@pytest.mark.parametrize(("max_det", "conf"), [(1000, 0.05), (7, 0.05), (100, 0.3)])
def test_batched_nms_and_topk_match_per_image_per_class_loop(max_det, conf):
    net, grid, num_classes = 160, 5, 3
    image_sizes = [(300, 200), (160, 240), (500, 500)]
    output = _random_output(2, batch=3, num_classes=num_classes, grid=grid)
    anchors = torch.tensor(ANCHORS, dtype=torch.float64)
    dets = postprocess(
        output,
        anchors,
        num_classes,
        (net, net),
        torch.tensor(image_sizes),
        conf_thresh=conf,
        nms_thresh=0.45,
        max_det=max_det,
    )
    reference = _reference_postprocess(output, num_classes, net, image_sizes, conf, 0.45, max_det)
    assert sum(len(r) for r in reference) > 20, "the case must produce many candidates"
    if max_det < 100:
        assert all(len(r) == max_det for r in reference), "top-k must cut every image"
    for det, rows in zip(dets, reference):
        assert len(det.scores) == len(rows)
        _assert_detections_are(det, rows)


def test_max_candidates_keeps_the_best_pairs_per_image_before_nms():
    net, grid, num_classes = 160, 5, 3
    image_sizes = [(300, 200), (160, 240)]
    output = _random_output(7, batch=2, num_classes=num_classes, grid=grid)
    anchors = torch.tensor(ANCHORS, dtype=torch.float64)
    for cap in (10, 40, 10_000):
        dets = postprocess(
            output, anchors, num_classes, (net, net), torch.tensor(image_sizes), conf_thresh=0.05, max_candidates=cap
        )
        reference = _reference_postprocess(
            output, num_classes, net, image_sizes, 0.05, 0.45, 100, cap if cap < 5 * grid * grid * num_classes else None
        )
        for det, rows in zip(dets, reference):
            torch.testing.assert_close(det.scores, torch.tensor([r[0] for r in rows], dtype=torch.float64))
            assert det.labels.tolist() == [r[1] for r in rows]
        if cap == 10:
            assert all(len(det.scores) <= 10 for det in dets)


def test_nms_runs_on_unclipped_boxes_then_clips():
    """Two boxes of one class, one cell, on a 128 x 128 image: one inside, one reaching far off both sides.
    Unclipped their IoU is 0.9 / 3.1, so Darknet keeps both; clipped first their IoU would be 0.9 and the
    second would be suppressed."""
    net, grid = 128, 4
    inside, wide = (0.0, 0.1, 0.9, 0.8), (-1.1, 0.1, 2.0, 0.8)  # normalised to the (square) network input
    output = _output_for_boxes([[inside]], [[1]], num_classes=2, grid=grid)
    second = _output_for_boxes([[wide]], [[1]], num_classes=2, grid=grid)  # decoded by the same cell's anchor 1
    output = output.view(1, len(ANCHORS), 7, grid, grid)
    output[:, 1] = second.view(1, len(ANCHORS), 7, grid, grid)[:, 0]
    output[:, 1, 4] = torch.where(output[:, 1, 4] > 0, 20.0, -30.0)  # a slightly lower score
    anchors = torch.tensor([ANCHORS[0], ANCHORS[0], *ANCHORS[2:]], dtype=torch.float64)
    (det,) = postprocess(
        output.view(1, -1, grid, grid), anchors, 2, (net, net), torch.tensor([[net, net]]), conf_thresh=0.5
    )
    assert det.labels.tolist() == [1, 1]
    expected = torch.tensor([[0.0, 0.1, 0.9, 0.8], [0.0, 0.1, 1.0, 0.8]], dtype=torch.float64) * net
    torch.testing.assert_close(det.boxes, expected)


def test_nothing_above_threshold_gives_empty_detections():
    output = _random_output(3, batch=2, num_classes=2, grid=3)
    sizes = torch.tensor([[96, 96], [50, 80]])
    dets = postprocess(output, torch.tensor(ANCHORS, dtype=torch.float64), 2, (96, 96), sizes, conf_thresh=1.0)
    assert len(dets) == 2
    for det in dets:
        assert det.boxes.shape == (0, 4) and det.scores.shape == (0,) and det.labels.shape == (0,)


def _diou(a, b) -> float:
    """DIoU of two xyxy boxes by hand: IoU - centre distance^2 / enclosing diagonal^2 (IoU 0 for two
    degenerate boxes, e.g. both clipped flat against the same image edge)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    cw = max(a[2], b[2]) - min(a[0], b[0])
    ch = max(a[3], b[3]) - min(a[1], b[1])
    d2 = ((a[0] + a[2]) / 2 - (b[0] + b[2]) / 2) ** 2 + ((a[1] + a[3]) / 2 - (b[1] + b[3]) / 2) ** 2
    return (inter / union if union > 0 else 0.0) - d2 / (cw * cw + ch * ch + 1e-7)


def _slow_diou_nms(boxes, scores, groups, thresh) -> list[int]:
    """Greedy DIoU-NMS per group, one box at a time."""
    boxes, scores, groups = boxes.tolist(), scores.tolist(), groups.tolist()
    order = sorted(range(len(scores)), key=lambda k: -scores[k])
    kept: list[int] = []
    for k in order:
        if all(groups[m] != groups[k] or _diou(boxes[m], boxes[k]) <= thresh for m in kept):
            kept.append(k)
    return kept


def test_diou_nms_matches_slow_greedy_reference():
    gen = torch.Generator().manual_seed(4)
    count = 300
    xy = torch.rand(count, 2, generator=gen, dtype=torch.float64) * 60
    boxes = torch.cat([xy, xy + 5 + torch.rand(count, 2, generator=gen, dtype=torch.float64) * 25], 1)
    scores = torch.rand(count, generator=gen, dtype=torch.float64)
    groups = torch.randint(0, 5, (count,), generator=gen)
    for thresh in (0.3, 0.5):
        expected = _slow_diou_nms(boxes, scores, groups, thresh)
        assert 0 < len(expected) < count
        assert batched_diou_nms(boxes, scores, groups, thresh).tolist() == expected
        # tiny chunks: one group per chunk, same answer
        assert batched_diou_nms(boxes, scores, groups, thresh, max_elements=1).tolist() == expected


def test_diou_nms_handles_suppression_chains_and_differs_from_iou_nms():
    # a chain: 0 suppresses 1, 1 would suppress 2 but is gone, 0 and 2 barely overlap -> keep 0 and 2
    chain = torch.tensor([[0.0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10]], dtype=torch.float64)
    scores = torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64)
    groups = torch.zeros(3, dtype=torch.int64)
    assert batched_diou_nms(chain, scores, groups, 0.4).tolist() == _slow_diou_nms(chain, scores, groups, 0.4) == [0, 2]
    # IoU 0.5 but DIoU 0.45: standard NMS at 0.47 suppresses, DIoU-NMS keeps both
    pair = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 20]], dtype=torch.float64)
    pair_scores = torch.tensor([0.9, 0.8], dtype=torch.float64)
    assert nms(pair, pair_scores, 0.47).tolist() == [0]
    assert batched_diou_nms(pair, pair_scores, torch.zeros(2, dtype=torch.int64), 0.47).tolist() == [0, 1]


def test_postprocess_diou_matches_slow_reference():
    net, grid, num_classes = 160, 5, 3
    image_sizes = torch.tensor([[160, 160], [320, 200]])
    output = _random_output(5, batch=2, num_classes=num_classes, grid=grid)
    anchors = torch.tensor(ANCHORS, dtype=torch.float64)
    dets = postprocess(
        output,
        anchors,
        num_classes,
        (net, net),
        image_sizes,
        conf_thresh=0.05,
        nms_thresh=0.45,
        nms="diou",
        max_det=1000,
    )
    boxes, objectness, probs = decode(output, torch.tensor(ANCHORS, dtype=torch.float64), num_classes)
    for b, det in enumerate(dets):
        w, h = image_sizes[b].tolist()
        px = torch.tensor([_darknet_correct_box(box, w, h, net) for box in boxes[b].tolist()], dtype=torch.float64)
        scores = objectness[b][:, None] * probs[b]
        box_idx, labels = torch.nonzero(scores > 0.05, as_tuple=True)
        kept = _slow_diou_nms(px[box_idx], scores[box_idx, labels], labels, 0.45)  # on unclipped boxes
        assert len(kept) > 5
        torch.testing.assert_close(det.scores, scores[box_idx, labels][kept])
        assert det.labels.tolist() == labels[kept].tolist()
        clipped = torch.minimum(px[box_idx][kept].clamp(min=0), torch.tensor([w, h, w, h], dtype=torch.float64))
        torch.testing.assert_close(det.boxes, clipped)


def test_pairwise_distance_box_iou_matches_torchvision():
    gen = torch.Generator().manual_seed(6)
    xy = torch.rand(2, 7, 2, generator=gen)
    b1 = torch.cat([xy, xy + torch.rand(2, 7, 2, generator=gen)], -1)
    xy = torch.rand(2, 5, 2, generator=gen)
    b2 = torch.cat([xy, xy + torch.rand(2, 5, 2, generator=gen)], -1)
    got = pairwise_distance_box_iou(b1, b2)
    for k in range(2):
        torch.testing.assert_close(got[k], distance_box_iou(b1[k], b2[k]))


def test_decode_with_a_tree_gives_darknets_tree_probabilities():
    output = _random_output(3, batch=2, num_classes=HAND.num_nodes, grid=3)
    anchors = torch.tensor(ANCHORS, dtype=torch.float64)
    for conditional in (False, True):
        _, _, probs = decode(output, anchors, HAND.num_nodes, HAND, conditional=conditional)
        reference = _loop_decode(output, ANCHORS, HAND.num_nodes, HAND, conditional)
        for b, preds in enumerate(reference):
            torch.testing.assert_close(probs[b], torch.tensor([p[2] for p in preds], dtype=torch.float64))


@pytest.mark.parametrize("level", ["leaves", "top"])
def test_tree_scores_against_a_fixed_class_list_match_the_loop(level):
    """Evaluation at the leaves or at the roots: score = objectness x P(node), labels index the list."""
    net, grid = 160, 4
    image_sizes = [(300, 200), (160, 240)]
    tree_classes = list(HAND.leaves) if level == "leaves" else [0, 1]
    output = _random_output(4, batch=2, num_classes=HAND.num_nodes, grid=grid)
    dets = postprocess(
        output,
        torch.tensor(ANCHORS, dtype=torch.float64),
        HAND.num_nodes,
        (net, net),
        torch.tensor(image_sizes),
        conf_thresh=0.05,
        max_det=1000,
        tree=HAND,
        tree_classes=tree_classes,
    )
    reference = _reference_postprocess(
        output, HAND.num_nodes, net, image_sizes, 0.05, 0.45, 1000, tree=HAND, tree_classes=tree_classes
    )
    assert sum(len(r) for r in reference) > 10
    for det, rows in zip(dets, reference):
        _assert_detections_are(det, rows)


def test_tree_walk_gives_each_box_one_label_scored_by_objectness():
    """Without a class list: Darknet's get_region_detections with a tree, on conditional probabilities (the
    paper's rule): the label is where the walk stops, the score the objectness, NMS per label."""
    net, grid, conf, hier = 160, 4, 0.3, 0.5
    image_sizes = [(300, 200), (160, 240)]
    output = _random_output(5, batch=2, num_classes=HAND.num_nodes, grid=grid)
    dets = postprocess(
        output,
        torch.tensor(ANCHORS, dtype=torch.float64),
        HAND.num_nodes,
        (net, net),
        torch.tensor(image_sizes),
        conf_thresh=conf,
        max_det=None,
        tree=HAND,
        hier_thresh=hier,
    )
    stops = set()
    for det, preds, (w, h) in zip(dets, _loop_decode(output, ANCHORS, HAND.num_nodes, HAND, True), image_sizes):
        boxes = [_darknet_correct_box(box, w, h, net) for box, _, _ in preds]
        labels = [darknet_hierarchy_top_prediction(cond, HAND, hier) for _, _, cond in preds]
        stops |= {HAND.depth[c] for c in labels}
        rows = []
        for c in sorted(set(labels)):
            idx = [i for i, (_, obj, _) in enumerate(preds) if labels[i] == c and obj > conf]
            for k in _do_nms_sort([boxes[i] for i in idx], [preds[i][1] for i in idx], 0.45):
                x1, y1, x2, y2 = boxes[idx[k]]
                rows.append(
                    (
                        preds[idx[k]][1],
                        c,
                        [min(max(x1, 0), w), min(max(y1, 0), h), min(max(x2, 0), w), min(max(y2, 0), h)],
                    )
                )
        rows.sort(key=lambda r: -r[0])
        _assert_detections_are(det, rows)
    assert len(stops) >= 2, "the case must stop the walk at more than one depth"
