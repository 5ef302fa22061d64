"""Darknet's YOLOv2 region loss (``forward_region_layer`` in region_layer.c), vectorised over batch and truths.

Darknet does not compute a loss: it writes a *delta* per output (target - prediction, times a scale) and
back-propagates it as the negative gradient with respect to the layer's raw input (the 1x1 conv's output). For
tx, ty and objectness the delta that reaches the conv is multiplied by the logistic gradient s(1-s): inside
forward_region_layer in the YOLOv2 release (c6afc7ff), in backward_region_layer_gpu at pjreddie's HEAD
(f6afaabc region_layer.c:478-494; the CPU backward there is commented out). This module writes the scalar whose
autograd gradient is exactly ``-delta / B`` (B = images in the batch), element by element:

====================  ======================================  ==========================================
output                Darknet's delta                         our term (summed, then divided by B)
====================  ======================================  ==========================================
tx, ty (sigmoid s)    scale * (target - s) * s * (1 - s)      0.5 * scale * (target - s)^2
tw, th (linear t)     scale * (target - t)                    0.5 * scale * (target - t)^2
objectness (s)        scale * (target - s) * s * (1 - s)      0.5 * scale * (target - s)^2
class logits z        scale * (onehot - softmax(z))           scale * cross_entropy(z, label)
====================  ======================================  ==========================================

The sigmoid factor s(1-s) comes from the chain rule, and the softmax + cross-entropy gradient is (p - onehot),
so these are the only scalars with Darknet's gradients. (Darknet's printed ``cost`` is sum(delta^2) over the
layer's deltas, region_layer.c:319, divided by the images in the batch when printed, network.c:327: a different
number, not what is minimised.)

Why divide by B: Darknet sums deltas over its whole batch (64 images, all subdivisions) and its SGD step is
``w += learning_rate / batch * sum``, i.e. the per-image mean. With ``total`` = per-image mean, a plain
``torch.optim.SGD`` at Darknet's learning rate takes Darknet's step (a trainer that accumulates gradients over
k micro-batches must divide each micro-batch's ``total`` by k).

Rules (yolov2-voc.cfg [region], the region_layer.c of the YOLOv2 release, also AlexeyAB's fork):

1. Every prediction: best IoU with any truth of its image; objectness target 0 with ``noobject_scale``
   unless that IoU > ``thresh``, then no objectness gradient ("ignored").
2. While ``seen < prior_seen`` (12800): every prediction's (tx, ty, tw, th) is pulled to its anchor centred in
   its cell (sigmoid(tx) = sigmoid(ty) = 0.5, tw = th = 0) with ``prior_scale`` (0.01).
3. Every truth: cell ``(floor(x*W), floor(y*H))``, anchor = best shape IoU (``bias_match=1``); that prediction
   gets coordinate targets (x*W - i, y*H - j, log(w*W/pw), log(h*H/ph)) with ``coord_scale``, objectness target
   IoU(pred, truth) (``rescore=1``, a constant: no gradient through it) or 1, with ``object_scale``, and the
   softmax class term with ``class_scale``. These replace rule 1 and 2 for that prediction. When several truths
   land on the same (image, cell, anchor), the last one in ``targets`` order wins (Darknet overwrites).

The coordinate scale is ``coord_scale`` as in that release. From commit 60e952ba (2017-03-26) on, and at HEAD
f6afaabc (region_layer.c:293), pjreddie's code calls ``delta_region_box`` with ``coord_scale * (2 - w*h)``
(truth w, h normalised) and applies the sigmoid gradient in the GPU backward only; ``coord_wh_weight=True`` gives
the ``(2 - w*h)`` weighting (default off, to match REFERENCE.md).

YOLO9000 (``tree``, ``class_only``; Darknet's ``[region] tree=``, region_layer.c of January 2017, the paper's
rules):

4. With a WordTree the class scores are a softmax per sibling group, and the class term of a label is the sum of
   the softmax cross-entropies of the groups on its path to the root (:func:`yolov2.hierarchy.
   hierarchical_class_loss`: gradient p - onehot there, nothing below the label or off its path).
5. A classification-only image (a label, no box) takes none of rules 1-3: every prediction gets the no-object
   term (no ignore threshold, no prior), except the one with the highest objectness x P(label), which gets the
   class term and an objectness target of at least ``CLASS_ONLY_OBJECTNESS`` (0.3; or no objectness gradient,
   ``class_only_objectness="zero"``, as later Darknet). No coordinate term. Without a tree the same rule applies
   with the flat softmax.

``seen``: Darknet increments ``net.seen`` by the batch size *before* the forward pass, so pass the number of
images seen including this batch.

"modern" mode keeps the same assignment but uses binary cross-entropy (with logits) for objectness (target the
detached IoU or 1, and 0 for non-ignored predictions), and for ``box_loss="ciou"|"eiou"`` replaces the
coordinate MSE by ``coord_scale * (1 - CIoU)`` (torchvision) or EIoU on boxes in grid units.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torchvision.ops import complete_box_iou_loss

from yolov2.boxes import (
    cxcywh_to_xyxy,
    efficient_iou_loss,
    pairwise_box_iou,
    region_boxes,
    wh_iou,
)
from yolov2.config import LossConfig
from yolov2.errors import ConfigError, DatasetError
from yolov2.hierarchy import (
    TreeTensors,
    group_log_softmax,
    group_softmax,
    hierarchical_class_loss,
    path_probability,
    tree_tensors,
)
from yolov2.wordtree import WordTree

__all__ = ["CLASS_ONLY_OBJECTNESS", "LossOutput", "region_loss"]

CLASS_ONLY_OBJECTNESS = 0.3  # Darknet's floor for the objectness of a classification-only image's chosen box


class LossOutput(NamedTuple):
    """The region loss and its parts, each a sum over the batch divided by the batch size.

    ``total == coord + obj + noobj + prior + cls`` (only ``total`` needs a backward). ``avg_iou`` and
    ``recall`` (IoU > 0.5) of the responsible predictions over all truths are detached statistics, as
    Darknet prints them.
    """

    total: torch.Tensor
    coord: torch.Tensor
    obj: torch.Tensor
    noobj: torch.Tensor
    prior: torch.Tensor
    cls: torch.Tensor
    avg_iou: torch.Tensor
    recall: torch.Tensor


def region_loss(
    output: torch.Tensor,
    targets: torch.Tensor,
    anchors: torch.Tensor,
    num_classes: int,
    seen: int,
    loss: LossConfig | None = None,
    *,
    tree: WordTree | TreeTensors | None = None,
    class_only: torch.Tensor | None = None,
) -> LossOutput:
    """Darknet's region loss (see the module docstring for the exact rules and the scaling).

    output (Tensor[B, A*(5+C), H, W]): the raw head output, anchor-major: for each anchor in turn
    [tx, ty, tw, th, to, C class scores]. targets (Tensor[B, T, 5]): rows [label, cx, cy, w, h], normalised to
    [0, 1] relative to the network input; rows with label < 0 or a width/height <= 0 are padding and may sit
    anywhere (Darknet's loader packs the truths and drops boxes under 0.001 wide or high, data.c:475; its region
    layer reads at most 30 and stops at the first row with x == 0; here the caller's loader does the dropping).
    anchors (Tensor[A, 2]): (pw, ph) in grid cells (Darknet's ``anchors=``).
    seen: images seen so far including this batch. Half-precision outputs are promoted to float32.
    loss: the scales and rules (``LossConfig()``: yolov2-voc.cfg's ``[region]``).
    tree: the WordTree of the class scores (C = its nodes, labels are node indices; rule 4).
    class_only (Tensor[B] bool): the images that carry only a label (rule 5): their first row with label >= 0
    gives it, and their box values are not read.
    """
    loss = loss or LossConfig()
    mode, box_loss, thresh, rescore = loss.mode, loss.box_loss, loss.thresh, loss.rescore
    object_scale, noobject_scale, class_scale = loss.object_scale, loss.noobject_scale, loss.class_scale
    coord_scale, coord_wh_weight, prior_scale, prior_seen = (
        loss.coord_scale,
        loss.coord_wh_weight,
        loss.prior_scale,
        loss.prior_seen,
    )
    if mode not in ("darknet", "modern"):
        raise ConfigError(f"loss.mode must be 'darknet' or 'modern', got {mode!r}")
    if box_loss not in ("mse", "ciou", "eiou"):
        raise ConfigError(f"loss.box_loss must be 'mse', 'ciou' or 'eiou', got {box_loss!r}")
    if mode == "darknet" and box_loss != "mse":
        raise ConfigError(f"loss.box_loss={box_loss!r} needs loss.mode='modern' (Darknet's box term is the MSE)")
    batch, channels, grid_h, grid_w = output.shape
    num_anchors = anchors.shape[0]
    if channels != num_anchors * (5 + num_classes):
        raise ConfigError(
            f"region_loss: output has {channels} channels, but {num_anchors} anchors and {num_classes} classes "
            f"need {num_anchors * (5 + num_classes)}"
        )
    if targets.dim() != 3 or targets.shape[0] != batch or targets.shape[2] != 5:
        raise ValueError(f"region_loss: targets must be (B={batch}, T, 5), got {tuple(targets.shape)}")

    dtype = torch.promote_types(output.dtype, torch.float32)
    device = output.device
    out = output.to(dtype).view(batch, num_anchors, 5 + num_classes, grid_h, grid_w)
    anchors = anchors.to(device=device, dtype=dtype)
    targets = targets.to(device=device, dtype=dtype)
    zero = out.new_zeros(())

    # ---- truths: validity, responsible cell and anchor, last-writer-wins per slot ------------------------------
    labels = targets[..., 0]
    valid = (labels >= 0) & (targets[..., 3] > 0) & (targets[..., 4] > 0)  # (B, T)
    checked = valid
    if class_only is not None:
        class_only = class_only.to(device=device, dtype=torch.bool)
        if class_only.shape != (batch,):
            raise ValueError(f"region_loss: class_only must be (B={batch},), got {tuple(class_only.shape)}")
        valid = valid & ~class_only[:, None]  # rules 1-3 see no truth in a classification-only image
        checked = valid | (class_only[:, None] & (labels >= 0))
    if bool((checked & (labels >= num_classes)).any()):
        bad = int(labels[checked & (labels >= num_classes)].max())
        raise DatasetError(f"region_loss: truth label {bad} is not below num_classes={num_classes}")
    tree = tree_tensors(tree, device) if tree is not None else None
    if tree is not None and tree.num_nodes != num_classes:
        raise ConfigError(f"region_loss: the tree has {tree.num_nodes} nodes, the head {num_classes} classes")
    # Padding gets a harmless box so that log() and IoU stay finite; it is masked out below.
    fallback = targets.new_tensor([0.5, 0.5, 0.25, 0.25])
    tbox = torch.where(valid[..., None], targets[..., 1:], fallback)  # (B, T, 4) cxcywh normalised
    cls_target = torch.where(valid, labels, torch.zeros_like(labels)).long()
    gi = (tbox[..., 0] * grid_w).floor().long().clamp(0, grid_w - 1)  # Darknet: i = (int)(x * W)
    gj = (tbox[..., 1] * grid_h).floor().long().clamp(0, grid_h - 1)
    num_truths = targets.shape[1]
    truth_wh_grid = tbox[..., 2:] * tbox.new_tensor([grid_w, grid_h])
    best_n = wh_iou(truth_wh_grid.reshape(-1, 2), anchors).argmax(1).view(batch, num_truths)  # first max wins

    pred_index = (best_n * grid_h + gj) * grid_w + gi  # (B, T) index into the image's A*H*W predictions
    order = torch.arange(num_truths, device=device)
    same_slot = pred_index[:, :, None] == pred_index[:, None, :]  # (B, T, T')
    later_same_slot = same_slot & valid[:, None, :] & (order[None, :, None] < order[None, None, :])
    owner = valid & ~later_same_slot.any(2)  # (B, T): this truth writes its slot's deltas last

    # ---- every prediction: decoded box, best IoU with any truth, responsible mask -----------------------------
    raw_xywh = out[:, :, 0:4]  # (B, A, 4, H, W)
    obj_logit = out[:, :, 4]  # (B, A, H, W)
    with torch.no_grad():
        pred_boxes = cxcywh_to_xyxy(region_boxes(raw_xywh, anchors)).view(batch, -1, 4)  # (B, A*H*W, 4) normalised
        # IoU of each real truth with every prediction of its own image: (K, A*H*W) for the K real truths of the
        # batch, rather than (B, A*H*W, T) over the padding too (most of T is padding in VOC/COCO batches).
        truth_b, truth_t = valid.nonzero(as_tuple=True)
        ious = pairwise_box_iou(cxcywh_to_xyxy(tbox[truth_b, truth_t])[:, None, :], pred_boxes[truth_b])[:, 0]
        best_iou = pred_boxes.new_zeros(pred_boxes.shape[:2])  # Darknet starts best_iou at 0
        best_iou.scatter_reduce_(0, truth_b[:, None].expand_as(ious), ious, "amax")  # max: order-independent
        ignored = (best_iou > thresh).view(batch, num_anchors, grid_h, grid_w)
        truth_iou = torch.zeros_like(labels)  # (B, T): IoU(responsible prediction, truth); 0 for padding
        truth_iou[truth_b, truth_t] = ious.gather(1, pred_index[truth_b, truth_t][:, None])[:, 0]
        responsible = torch.zeros(batch * num_anchors * grid_h * grid_w, dtype=dtype, device=device)
        image_offset = (torch.arange(batch, device=device) * (num_anchors * grid_h * grid_w))[:, None]
        responsible.index_add_(0, (pred_index + image_offset).view(-1), owner.to(dtype).view(-1))
        responsible = responsible.view(batch, num_anchors, grid_h, grid_w) > 0

    # ---- rule 5: classification-only images (YOLO9000) ---------------------------------------------------------
    class_only_cls, class_only_obj, chosen = zero, zero, torch.zeros_like(responsible)
    if class_only is not None and bool(class_only.any()):
        class_only_cls, class_only_obj, chosen = _class_only_terms(
            out, labels, class_only, num_classes, tree, loss, class_scale, object_scale
        )

    # ---- rule 1: objectness of unassigned predictions ----------------------------------------------------------
    noobj_mask = (~responsible & ~ignored & ~chosen).to(dtype)
    if mode == "darknet":
        noobj_terms = 0.5 * noobject_scale * torch.sigmoid(obj_logit) ** 2
    else:
        noobj_terms = noobject_scale * F.binary_cross_entropy_with_logits(
            obj_logit, torch.zeros_like(obj_logit), reduction="none"
        )
    noobj = (noobj_terms * noobj_mask).sum()

    # ---- rule 2: anchor prior while seen < prior_seen ----------------------------------------------------------
    prior = zero
    if seen < prior_seen:
        sxy = torch.sigmoid(raw_xywh[:, :, 0:2])
        prior_terms = ((0.5 - sxy) ** 2).sum(2) + (raw_xywh[:, :, 2:4] ** 2).sum(2)  # (B, A, H, W)
        no_prior = responsible if class_only is None else responsible | class_only[:, None, None, None]
        prior = 0.5 * prior_scale * (prior_terms * (~no_prior).to(dtype)).sum()

    # ---- rule 3: the responsible prediction of each truth ------------------------------------------------------
    image_index = torch.arange(batch, device=device)[:, None].expand(batch, num_truths)
    picked = out[image_index, best_n, :, gj, gi]  # (B, T, 5+C): advanced indices first, then the channel slice
    weight = owner.to(dtype)
    scale = coord_scale * (2 - tbox[..., 2] * tbox[..., 3]) if coord_wh_weight else coord_scale
    anchor_wh = anchors[best_n]  # (B, T, 2)
    if box_loss == "mse":
        txy_target = torch.stack((tbox[..., 0] * grid_w - gi, tbox[..., 1] * grid_h - gj), -1)
        twh_target = torch.log(truth_wh_grid / anchor_wh)
        coord_terms = ((txy_target - torch.sigmoid(picked[..., 0:2])) ** 2).sum(-1)
        coord_terms = 0.5 * scale * (coord_terms + ((twh_target - picked[..., 2:4]) ** 2).sum(-1))
    else:
        cell_xy = torch.stack((gi, gj), -1).to(dtype)
        pred_grid = torch.cat((cell_xy + torch.sigmoid(picked[..., 0:2]), anchor_wh * torch.exp(picked[..., 2:4])), -1)
        truth_grid = torch.cat((tbox[..., 0:2] * tbox.new_tensor([grid_w, grid_h]), truth_wh_grid), -1)
        iou_loss = complete_box_iou_loss if box_loss == "ciou" else efficient_iou_loss
        coord_terms = scale * iou_loss(cxcywh_to_xyxy(pred_grid).view(-1, 4), cxcywh_to_xyxy(truth_grid).view(-1, 4))
        coord_terms = coord_terms.view(batch, num_truths)
    coord = (coord_terms * weight).sum()

    obj_target = truth_iou if rescore else torch.ones_like(truth_iou)
    if mode == "darknet":
        obj_terms = 0.5 * object_scale * (obj_target - torch.sigmoid(picked[..., 4])) ** 2
    else:
        obj_terms = object_scale * F.binary_cross_entropy_with_logits(
            picked[..., 4], obj_target.clamp(0, 1), reduction="none"
        )
    obj = (obj_terms * weight).sum() + class_only_obj

    if tree is None:
        cls_terms = class_scale * _class_loss(picked[..., 5:].reshape(-1, num_classes), cls_target.view(-1), None)
        cls_terms = cls_terms.view(batch, num_truths)
        cls = (cls_terms * weight).sum() + class_only_cls
    else:
        cls = class_scale * _tree_class_sum(picked[..., 5:], cls_target, tree, valid, later_same_slot) + class_only_cls

    parts = [part / batch for part in (coord, obj, noobj, prior, cls)]
    with torch.no_grad():
        count = valid.sum().clamp(min=1).to(dtype)
        avg_iou = (truth_iou * valid).sum() / count
        recall = ((truth_iou > 0.5) & valid).sum().to(dtype) / count
    total = parts[0] + parts[1] + parts[2] + parts[3] + parts[4]
    coord, obj, noobj, prior, cls = parts
    return LossOutput(total, coord, obj, noobj, prior, cls, avg_iou, recall)


def _tree_class_sum(
    scores: torch.Tensor, labels: torch.Tensor, tree: TreeTensors, valid: torch.Tensor, later_same_slot: torch.Tensor
) -> torch.Tensor:
    """Rule 4 for the truths (B, T) of rule 3, summed: each group on a label's path adds its cross-entropy.

    Darknet's last writer wins group by group here: ``delta_region_class`` writes only the groups on a label's
    path, so of two truths in one (cell, anchor) slot the earlier one keeps the groups off the later one's path.
    """
    paths = tree.paths[labels]  # (B, T, D): the label, its parent, ..., its root, then -1
    log_p = group_log_softmax(scores, tree).gather(-1, paths.clamp(min=0))
    keep = (paths >= 0) & valid[..., None]
    rewritten = later_same_slot.any(2)  # (B, T): a later truth writes this truth's slot
    if bool(rewritten.any()):
        groups = torch.where(paths >= 0, tree.group_of[paths.clamp(min=0)], -1)  # (B, T, D)
        b, t = rewritten.nonzero(as_tuple=True)
        # (K, D, T', D'): the group of (t, d) is on the path of a later truth t' of the slot
        same = (groups[b, t][:, :, None, None] == groups[b][:, None]) & (groups[b, t] >= 0)[:, :, None, None]
        keep[b, t] &= ~(same & later_same_slot[b, t][:, None, :, None]).flatten(2).any(2)
    return -(log_p * keep).sum()


def _class_loss(logits: torch.Tensor, labels: torch.Tensor, tree: TreeTensors | None) -> torch.Tensor:
    """Per row: the softmax cross-entropy (rule 3), or the sum of the group cross-entropies on the label's path."""
    if tree is None:
        return F.cross_entropy(logits, labels, reduction="none")
    return hierarchical_class_loss(logits, labels, tree)


def _class_only_terms(
    out: torch.Tensor,
    labels: torch.Tensor,
    class_only: torch.Tensor,
    num_classes: int,
    tree: TreeTensors | None,
    loss: LossConfig,
    class_scale: float,
    object_scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rule 5: the class and objectness terms of the classification-only images (summed), and the mask
    (B, A, H, W) of the prediction each one chose (it takes no no-object term)."""
    batch, num_anchors, _, grid_h, grid_w = out.shape
    images = class_only.nonzero(as_tuple=True)[0]
    labelled = labels[images] >= 0
    if not bool(labelled.any(1).all()):
        raise DatasetError("region_loss: a classification-only image has no label (every row is padding)")
    label = labels[images, labelled.to(torch.uint8).argmax(1)].long()  # the first labelled row
    scores = out[images, :, 5:].permute(0, 1, 3, 4, 2).reshape(len(images), -1, num_classes)  # (K, A*H*W, C)
    obj_logit = out[images, :, 4].reshape(len(images), -1)
    with torch.no_grad():
        per_box = label[:, None].expand(obj_logit.shape)
        if tree is None:
            p_label = torch.softmax(scores, -1).gather(-1, per_box[..., None])[..., 0]
        else:
            p_label = path_probability(group_softmax(scores, tree), per_box, tree)
        best = (torch.sigmoid(obj_logit) * p_label).argmax(1)  # the first maximum, as Darknet's `p > maxp`
    rows = torch.arange(len(images), device=out.device)
    cls = class_scale * _class_loss(scores[rows, best], label, tree).sum()
    obj = out.new_zeros(())
    if loss.class_only_objectness == "push":
        logit = obj_logit[rows, best]
        below = (torch.sigmoid(logit) < CLASS_ONLY_OBJECTNESS).to(logit.dtype).detach()
        if loss.mode == "darknet":
            terms = 0.5 * object_scale * (CLASS_ONLY_OBJECTNESS - torch.sigmoid(logit)) ** 2
        else:
            target = torch.full_like(logit, CLASS_ONLY_OBJECTNESS)
            terms = object_scale * F.binary_cross_entropy_with_logits(logit, target, reduction="none")
        obj = (terms * below).sum()
    elif loss.class_only_objectness != "zero":
        raise ConfigError(f"loss.class_only_objectness must be 'push' or 'zero', got {loss.class_only_objectness!r}")
    chosen = torch.zeros(batch, num_anchors * grid_h * grid_w, dtype=torch.bool, device=out.device)
    chosen[images, best] = True
    return cls, obj, chosen.view(batch, num_anchors, grid_h, grid_w)
