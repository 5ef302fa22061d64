"""From the raw head output to detections in original-image pixels: decode, undo letterbox, threshold, NMS, top-k.

Batched end to end: one ``nonzero`` picks every (image, box, class) candidate of the whole batch, one
``torchvision.ops.batched_nms`` call runs per-class NMS for all images at once (the group id is
``image * C + class``), and the per-image top-k is a stable sort plus a rank within each image. The only
per-image step is splitting the final tensor into the returned list.

In Darknet's order (``get_network_boxes``, ``do_nms_sort``, then ``print_detector_detections``): decode, map to
image pixels with ``correct_region_boxes``' letterbox inverse, threshold, NMS on the unclipped boxes, and only
then clip to the image. Every (box, class) pair whose score objectness x p(class) is above ``conf_thresh`` is a
candidate, so one box can give several class detections. Clipping before NMS (as torchvision's detectors do)
changes which boxes survive: a box reaching far outside the image overlaps its neighbours less once clipped.

With a WordTree (YOLO9000) the class scores are a softmax per sibling group and a node's probability is the
product along its path (:mod:`yolov2.hierarchy`). Against a fixed class list (``tree_classes``: evaluation at
the leaves or at any level) the score of (box, class) is objectness x P(class node), as above. Without one, each
box gets one label, the node where the tree walk stops (``hier_thresh``), and its score is the objectness
(Darknet's ``get_region_detections``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torchvision.ops import batched_nms

from yolov2.boxes import cxcywh_to_xyxy, letterbox_geometry, pairwise_distance_box_iou, region_boxes
from yolov2.errors import ConfigError
from yolov2.hierarchy import TreeTensors, absolute_probabilities, group_softmax, tree_tensors, tree_walk
from yolov2.wordtree import WordTree

__all__ = [
    "Detections",
    "decode",
    "to_image_pixels",
    "clip_to_image",
    "batched_diou_nms",
    "postprocess",
]


class Detections(NamedTuple):
    """One image's detections, sorted by decreasing score.

    boxes (Tensor[K, 4]) xyxy in original-image pixels (0-based continuous), scores (Tensor[K]),
    labels (Tensor[K] int64).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


def decode(
    output: torch.Tensor,
    anchors: torch.Tensor,
    num_classes: int,
    tree: WordTree | TreeTensors | None = None,
    *,
    conditional: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode the raw head output (REFERENCE.md "Location prediction").

    output (Tensor[B, A*(5+C), H, W]) anchor-major, anchors (Tensor[A, 2]) in grid cells. Returns
    boxes (Tensor[B, N, 4]) xyxy normalised to the network input ([0, 1] inside it), objectness (Tensor[B, N])
    = sigmoid(to), class_probs (Tensor[B, N, C]) = softmax of the class scores (with a ``tree``: each node's
    absolute probability, or with ``conditional=True`` its probability given its parent); N = A*H*W in (anchor,
    row, column) order. Half-precision outputs are promoted to float32.
    """
    batch, channels, grid_h, grid_w = output.shape
    num_anchors = anchors.shape[0]
    if channels != num_anchors * (5 + num_classes):
        raise ConfigError(
            f"decode: output has {channels} channels, but {num_anchors} anchors and {num_classes} classes "
            f"need {num_anchors * (5 + num_classes)}"
        )
    dtype = torch.promote_types(output.dtype, torch.float32)
    out = output.to(dtype).view(batch, num_anchors, 5 + num_classes, grid_h, grid_w)
    boxes = cxcywh_to_xyxy(region_boxes(out[:, :, :4], anchors.to(out.device))).reshape(batch, -1, 4)
    objectness = torch.sigmoid(out[:, :, 4]).reshape(batch, -1)
    scores = out[:, :, 5:].permute(0, 1, 3, 4, 2).reshape(batch, -1, num_classes)
    if tree is None:
        return boxes, objectness, torch.softmax(scores, dim=2)
    cond = group_softmax(scores, tree_tensors(tree, out.device))
    return boxes, objectness, cond if conditional else absolute_probabilities(cond, tree_tensors(tree, out.device))


def to_image_pixels(
    boxes: torch.Tensor, input_size: tuple[int, int], image_sizes: torch.Tensor, letterbox: bool = True
) -> torch.Tensor:
    """Map boxes (Tensor[B, N, 4]) xyxy normalised to the network input into each original image's pixels.

    input_size (w, h) of the network input; image_sizes (Tensor[B, 2]) original (w, h). ``letterbox=True``
    undoes :func:`yolov2.boxes.letterbox_geometry` as Darknet's ``correct_region_boxes`` does, with the padding
    ``(input - new) / 2`` as a float: half a pixel from where an odd padding pasted the image (``91`` rows,
    undone with ``91.5``), which is what Darknet's detections are. ``False`` undoes a plain resize. Not clipped
    (:func:`clip_to_image`).
    """
    input_w, input_h = input_size
    sizes = torch.as_tensor(image_sizes, device=boxes.device).reshape(-1, 2).to(boxes.dtype)
    pixels = boxes * boxes.new_tensor([input_w, input_h, input_w, input_h])
    if letterbox:
        new_wh, _ = letterbox_geometry(sizes.round(), input_w, input_h)
        new_wh = new_wh.to(boxes)
        pad = (new_wh.new_tensor([input_w, input_h]) - new_wh) / 2
        return (pixels - pad.repeat(1, 2)[:, None, :]) * (sizes / new_wh).repeat(1, 2)[:, None, :]
    return pixels * (sizes / sizes.new_tensor([input_w, input_h])).repeat(1, 2)[:, None, :]


def clip_to_image(boxes: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
    """Boxes (Tensor[K, 4]) xyxy clipped to [0, w] x [0, h] of image_sizes (Tensor[K, 2]) (w, h), one per box."""
    limits = image_sizes.to(boxes).repeat(1, 2)
    return torch.minimum(boxes.clamp(min=0), limits)


def batched_diou_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    idxs: torch.Tensor,
    iou_threshold: float,
    max_elements: int = 1 << 24,
) -> torch.Tensor:
    """Greedy DIoU-NMS per group (Zheng et al. 2020): a box is suppressed by a kept, higher-scoring box of the
    same group when IoU - d^2/c^2 > ``iou_threshold``.

    boxes (Tensor[K, 4]) xyxy, scores (Tensor[K]), idxs (Tensor[K]) group ids. Returns the indices kept
    (Tensor[int64]), by decreasing score, like ``torchvision.ops.batched_nms``. Vectorised: candidates are padded
    into (groups, longest group) and the greedy result is the fixed point of
    ``keep[j] = not any(keep[i] and suppresses[i, j] for i before j)`` (Cluster-NMS), reached from "keep all"
    in at most the length of the longest suppression chain. Groups are processed in chunks of at most
    ``max_elements`` pairwise entries.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[torch.argsort(idxs[order], stable=True)]  # by group, then by decreasing score
    _, counts = torch.unique_consecutive(idxs[order], return_counts=True)
    num_groups, longest = counts.numel(), int(counts.max())
    group = torch.repeat_interleave(torch.arange(num_groups, device=boxes.device), counts)
    group_start = torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    position = torch.arange(order.numel(), device=boxes.device) - group_start
    padded = boxes.new_zeros(num_groups, longest, 4)
    padded[group, position] = boxes[order]
    present = torch.zeros(num_groups, longest, dtype=torch.bool, device=boxes.device)
    present[group, position] = True
    earlier = torch.ones(longest, longest, dtype=torch.bool, device=boxes.device).triu(1)  # [i, j]: i before j
    keep = torch.zeros_like(present)
    step = max(1, max_elements // (longest * longest))
    for start in range(0, num_groups, step):
        chunk_boxes, chunk_present = padded[start : start + step], present[start : start + step]
        suppresses = (pairwise_distance_box_iou(chunk_boxes, chunk_boxes) > iou_threshold) & earlier
        suppresses &= chunk_present[:, :, None] & chunk_present[:, None, :]
        current = chunk_present
        while True:
            updated = chunk_present & ~(suppresses & current[:, :, None]).any(1)
            if torch.equal(updated, current):
                break
            current = updated
        keep[start : start + step] = current
    kept = order[keep[group, position]]
    return kept[torch.argsort(scores[kept], descending=True, stable=True)]


@torch.no_grad()
def postprocess(
    output: torch.Tensor,
    anchors: torch.Tensor,
    num_classes: int,
    input_size: tuple[int, int],
    image_sizes: torch.Tensor,
    *,
    letterbox: bool = True,
    conf_thresh: float = 0.005,
    nms_thresh: float = 0.45,
    max_det: int | None = 100,
    nms: Literal["standard", "diou"] = "standard",
    max_candidates: int | None = None,
    tree: WordTree | TreeTensors | None = None,
    tree_classes: Sequence[int] | None = None,
    hier_thresh: float = 0.5,
) -> list[Detections]:
    """Detections per image from the raw head output.

    output (Tensor[B, A*(5+C), H, W]) anchor-major; anchors (Tensor[A, 2]) grid cells; input_size (w, h) of the
    network input in pixels; image_sizes (Tensor[B, 2]) original (w, h). Score = objectness x p(class); every
    (box, class) with score > ``conf_thresh`` is a candidate; per-class NMS (``"standard"`` IoU via
    ``torchvision.ops.batched_nms``, or ``"diou"``) at ``nms_thresh`` on the unclipped boxes; at most ``max_det``
    per image by score (None: all, as Darknet); the boxes returned are clipped to the image.
    ``max_candidates``: keep only that many best (box, class) candidates per image before NMS (None: all, as
    Darknet). An untrained network puts nearly every pair above 0.005 (B x A*H*W x C candidates), and NMS
    time grows with the square of that; a cap such as 3000 bounds it.
    ``tree`` (C = its nodes): with ``tree_classes`` (node indices) the labels index that list and p(class) is the
    node's absolute probability; without, each box's label is its tree walk's node (``hier_thresh``, Darknet's
    default 0.5) and its score the objectness.
    """
    if nms not in ("standard", "diou"):
        raise ConfigError(f"postprocess: nms must be 'standard' or 'diou', got {nms!r}")
    batch = output.shape[0]
    sizes = torch.as_tensor(image_sizes, device=output.device).reshape(-1, 2)
    if sizes.shape[0] != batch:
        raise ValueError(f"postprocess: {sizes.shape[0]} image sizes for a batch of {batch}")
    walk = tree is not None and tree_classes is None
    boxes, objectness, class_probs = decode(output, anchors, num_classes, tree, conditional=walk)
    boxes = to_image_pixels(boxes, input_size, sizes, letterbox)
    if walk:
        assert tree is not None
        labels = tree_walk(class_probs, tree_tensors(tree, output.device), hier_thresh)  # (B, N)
        image, box = torch.nonzero(objectness > conf_thresh, as_tuple=True)
        label, candidate_scores, num_groups = labels[image, box], objectness[image, box], num_classes
    else:
        if tree_classes is not None:
            class_probs = class_probs[..., torch.as_tensor(list(tree_classes), device=output.device)]
        image, box, label, candidate_scores = _class_candidates(objectness, class_probs, conf_thresh, max_candidates)
        num_groups = class_probs.shape[-1]
    candidates = boxes[image, box]
    groups = image * num_groups + label
    if nms == "standard":
        keep = batched_nms(candidates, candidate_scores, groups, nms_thresh)
    else:
        keep = batched_diou_nms(candidates, candidate_scores, groups, nms_thresh)
    # keep is by decreasing score; a stable sort by image keeps that order within each image
    keep = keep[torch.argsort(image[keep], stable=True)]
    kept_image = image[keep]
    counts = torch.bincount(kept_image, minlength=batch)
    rank = torch.arange(keep.numel(), device=keep.device) - (counts.cumsum(0) - counts)[kept_image]
    if max_det is not None:
        keep = keep[rank < max_det]
        counts = counts.clamp(max=max_det)
    kept_boxes = clip_to_image(candidates[keep], sizes[image[keep]])
    counts_list = counts.tolist()
    return [
        Detections(b, s, lab)
        for b, s, lab in zip(
            kept_boxes.split(counts_list), candidate_scores[keep].split(counts_list), label[keep].split(counts_list)
        )
    ]


def _class_candidates(
    objectness: torch.Tensor, class_probs: torch.Tensor, conf_thresh: float, max_candidates: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image, box, label, score) of every (box, class) pair scoring objectness x p(class) > ``conf_thresh`` (of
    the ``max_candidates`` best per image, when set)."""
    batch, _, num_classes = class_probs.shape
    scores = objectness[:, :, None] * class_probs  # (B, N, C)
    if max_candidates is not None and max_candidates < scores[0].numel():
        top_scores, top_index = scores.view(batch, -1).topk(max_candidates, dim=1)
        image, column = torch.nonzero(top_scores > conf_thresh, as_tuple=True)
        flat = top_index[image, column]
        box, label = torch.div(flat, num_classes, rounding_mode="floor"), flat % num_classes
    else:
        image, box, label = torch.nonzero(scores > conf_thresh, as_tuple=True)
    return image, box, label, scores[image, box, label]
