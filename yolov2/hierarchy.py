"""YOLO9000's hierarchical softmax on a WordTree (:mod:`yolov2.wordtree`), as torch operations.

Every function takes class scores whose LAST dimension is the tree's nodes (C = ``tree.num_nodes``), any leading
shape. Darknet (pjreddie f6afaabc) normalises the scores with a softmax inside each sibling group
(``softmax_tree``, blas_kernels.cu:959-987), giving conditional probabilities P(node | parent); the rest follows:

* :func:`group_softmax` / :func:`group_log_softmax`: the group softmax (Darknet's forward);
* :func:`absolute_probabilities`: P(node) = product of the conditionals on its path (``hierarchy_predictions``
  with ``only_leaves=0``, tree.c:37-51);
* :func:`path_probability`: P(label) per row (``get_hierarchy_probability``, tree.c:27-35), for the
  classification-only rule (the box with the highest objectness x P(label) learns the class);
* :func:`hierarchical_class_loss`: cross-entropy in each group on the label's path to its root, whose gradient
  is minus Darknet's ``delta_region_class`` (region_layer.c:112-128) with scale 1;
* :func:`tree_walk`: Darknet's detection-time class choice (``hierarchy_top_prediction``, tree.c:53-81).

Memory stays O(C) per prediction for the 9k tree (9,418 nodes in 1,846 groups): groups are reduced by a
scatter over the node dimension (``scatter_reduce``, which also exports to ONNX), never padded into a [groups,
largest group] matrix. The index tensors come from :class:`TreeTensors`; every function also takes a
:class:`~yolov2.wordtree.WordTree` and builds them on the fly, so a training loop should build
``TreeTensors.from_tree(tree, device)`` once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from yolov2.errors import DatasetError
from yolov2.wordtree import WordTree

__all__ = [
    "TreeTensors",
    "absolute_probabilities",
    "group_log_softmax",
    "group_softmax",
    "hierarchical_class_loss",
    "labels_to_nodes",
    "path_probability",
    "tree_tensors",
    "tree_walk",
]


@dataclass(frozen=True)
class TreeTensors:
    """A WordTree's index tensors (all int64, on one device), built once per tree and device.

    ``group_of`` [C], ``parents`` [C] (-1: root), ``child_group`` [C] (-1: leaf), ``group_offsets`` and
    ``group_sizes`` [G] (groups are contiguous runs of nodes);
    ``paths`` [C, D]: row c = c, its parent, ..., its root, then -1 (D = max depth + 1); ``levels[d]``: the nodes
    at depth d, ascending; ``level_parent_pos[d]``: for each node of ``levels[d]``, its parent's position in
    ``levels[d - 1]`` (empty for d = 0); ``level_inverse`` [C]: node c's position in ``cat(levels)``.
    """

    num_nodes: int
    num_groups: int
    group_of: torch.Tensor
    parents: torch.Tensor
    child_group: torch.Tensor
    group_offsets: torch.Tensor
    group_sizes: torch.Tensor
    paths: torch.Tensor
    levels: tuple[torch.Tensor, ...]
    level_parent_pos: tuple[torch.Tensor, ...]
    level_inverse: torch.Tensor

    @classmethod
    def from_tree(cls, tree: WordTree, device: torch.device | str | None = None) -> TreeTensors:
        depth_count = tree.max_depth + 1
        paths = [(*path, *[-1] * (depth_count - len(path))) for path in map(tree.path, range(tree.num_nodes))]
        levels: list[list[int]] = [[] for _ in range(depth_count)]
        position = [0] * tree.num_nodes  # position of a node within its level
        for node, d in enumerate(tree.depth):  # ascending node order within each level
            position[node] = len(levels[d])
            levels[d].append(node)
        parent_pos = [[position[tree.parents[c]] for c in level] if d else [] for d, level in enumerate(levels)]
        order = [c for level in levels for c in level]
        inverse = [0] * tree.num_nodes
        for pos, c in enumerate(order):
            inverse[c] = pos

        def as_long(values: Sequence[int] | Sequence[Sequence[int]]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long, device=device)

        return cls(
            num_nodes=tree.num_nodes,
            num_groups=tree.num_groups,
            group_of=as_long(tree.group_of),
            parents=as_long(tree.parents),
            child_group=as_long(tree.child_group),
            group_offsets=as_long(tree.group_offsets),
            group_sizes=as_long(tree.group_sizes),
            paths=as_long(paths).reshape(tree.num_nodes, depth_count),
            levels=tuple(as_long(level) for level in levels),
            level_parent_pos=tuple(as_long(p) for p in parent_pos),
            level_inverse=as_long(inverse),
        )

    @property
    def device(self) -> torch.device:
        return self.group_of.device

    def to(self, device: torch.device | str) -> TreeTensors:
        """These tensors on ``device`` (``self`` when already there)."""
        device = torch.device(device)
        if self.device == device:
            return self

        def move(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return value.to(device)
            return tuple(t.to(device) for t in value) if isinstance(value, tuple) else value

        return TreeTensors(**{f.name: move(getattr(self, f.name)) for f in dataclasses.fields(self)})


def tree_tensors(tree: WordTree | TreeTensors, device: torch.device | str) -> TreeTensors:
    """``tree``'s index tensors on ``device`` (built from a WordTree, or moved if needed)."""
    if isinstance(tree, WordTree):
        return TreeTensors.from_tree(tree, device)
    return tree.to(device)


def _prepare(scores: torch.Tensor, tree: WordTree | TreeTensors, what: str) -> TreeTensors:
    t = tree_tensors(tree, scores.device)
    if scores.dim() == 0 or scores.shape[-1] != t.num_nodes:
        raise ValueError(
            f"{what}: the last dimension must be the tree's {t.num_nodes} nodes, got {tuple(scores.shape)}"
        )
    return t


def _group_reduce(values: torch.Tensor, t: TreeTensors, reduce: str) -> torch.Tensor:
    """[..., G]: ``reduce`` ('max', 'min', 'sum') of ``values`` [..., C] over each group's nodes.

    A scatter over the node dimension from the reduction's identity: O(C) memory, and it exports to ONNX
    (ScatterElements), which ``torch.segment_reduce`` does not.
    """
    index = t.group_of.expand_as(values)
    limits = torch.finfo(values.dtype) if values.is_floating_point() else torch.iinfo(values.dtype)
    start = {"max": limits.min, "min": limits.max, "sum": 0}[reduce]
    out = values.new_full((*values.shape[:-1], t.num_groups), start)
    return out.scatter_reduce(-1, index, values, _SCATTER_REDUCE[reduce])


_SCATTER_REDUCE = {"max": "amax", "min": "amin", "sum": "sum"}


def _shift_and_log_sum(logits: torch.Tensor, t: TreeTensors) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits - their group's max, log of the group's sum of exp(shifted)) per node, both [..., C]."""
    group_max = _group_reduce(logits.detach(), t, "max")  # a constant shift: no gradient needed
    shifted = logits - group_max.index_select(-1, t.group_of)
    sums = _group_reduce(shifted.exp(), t, "sum")
    return shifted, sums.log().index_select(-1, t.group_of)


def group_log_softmax(logits: torch.Tensor, tree: WordTree | TreeTensors) -> torch.Tensor:
    """log P(node | parent): log-softmax within each sibling group of ``logits`` [..., C] (numerically stable)."""
    t = _prepare(logits, tree, "group_log_softmax")
    shifted, log_sum = _shift_and_log_sum(logits, t)
    return shifted - log_sum


def group_softmax(logits: torch.Tensor, tree: WordTree | TreeTensors) -> torch.Tensor:
    """P(node | parent): softmax within each sibling group of ``logits`` [..., C]; every group sums to 1.

    Darknet's ``softmax_tree`` (blas_kernels.cu:959-987) with temperature 1, shifted by the exact group max.
    """
    t = _prepare(logits, tree, "group_softmax")
    shifted, log_sum = _shift_and_log_sum(logits, t)
    return (shifted - log_sum).exp()


def absolute_probabilities(cond: torch.Tensor, tree: WordTree | TreeTensors) -> torch.Tensor:
    """P(node): the product of the conditional probabilities ``cond`` [..., C] on each node's path to its root.

    Darknet's ``hierarchy_predictions`` with ``only_leaves=0`` (tree.c:37-51), computed level by level (one
    multiply per depth, memory O(C)); a node's children's probabilities sum to its own.
    """
    t = _prepare(cond, tree, "absolute_probabilities")
    level = cond.index_select(-1, t.levels[0])
    per_level = [level]
    for nodes, parent_pos in zip(t.levels[1:], t.level_parent_pos[1:]):
        level = cond.index_select(-1, nodes) * level.index_select(-1, parent_pos)
        per_level.append(level)
    return torch.cat(per_level, dim=-1).index_select(-1, t.level_inverse)


def _label_paths(labels: torch.Tensor, scores: torch.Tensor, t: TreeTensors, what: str) -> torch.Tensor:
    """[..., D]: the path (label, parent, ..., root, then -1) of every label; checks shape and range."""
    if labels.shape != scores.shape[:-1]:
        raise ValueError(f"{what}: labels {tuple(labels.shape)} must match the scores' {tuple(scores.shape[:-1])}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{what}: labels must be integer tree node indices, got {labels.dtype}")
    labels = labels.to(device=scores.device, dtype=torch.long)
    if labels.numel() and bool(((labels < 0) | (labels >= t.num_nodes)).any()):
        bad = labels[(labels < 0) | (labels >= t.num_nodes)][0]
        raise DatasetError(f"{what}: label {int(bad)} is not a tree node (0 to {t.num_nodes - 1})")
    return t.paths.index_select(0, labels.reshape(-1)).reshape(*labels.shape, t.paths.shape[1])


def labels_to_nodes(targets: torch.Tensor, class_nodes: torch.Tensor | None) -> torch.Tensor:
    """Targets (Tensor[B, T, 5], rows [label, cx, cy, w, h], label -1 = padding) with each dataset label replaced
    by its tree node (``class_nodes[label]``); unchanged without ``class_nodes``."""
    if class_nodes is None:
        return targets
    labels = targets[..., 0]
    real = labels >= 0
    if bool((real & (labels >= len(class_nodes))).any()):
        bad = int(labels[real & (labels >= len(class_nodes))].max())
        raise DatasetError(f"label {bad} has no tree node: the model maps {len(class_nodes)} classes")
    nodes = class_nodes.to(targets.device, targets.dtype)[labels.clamp(min=0).long()]
    return torch.cat((torch.where(real, nodes, labels)[..., None], targets[..., 1:]), -1)


def hierarchical_class_loss(logits: torch.Tensor, labels: torch.Tensor, tree: WordTree | TreeTensors) -> torch.Tensor:
    """Per-row YOLO9000 class loss: the sum of the softmax cross-entropies of the groups on each label's path.

    logits [..., C] (raw scores), labels [...] (tree node indices) -> [...]. For each node on the path from the
    label up to its root, the group holding that node contributes -log P(node | parent); groups below the label or
    off its path contribute nothing. The gradient w.r.t. ``logits`` is therefore p - onehot in each group on the
    path and 0 elsewhere: exactly minus Darknet's ``delta_region_class`` with scale 1 (region_layer.c:115-128).
    """
    t = _prepare(logits, tree, "hierarchical_class_loss")
    paths = _label_paths(labels, logits, t, "hierarchical_class_loss")
    log_p = group_log_softmax(logits, t).gather(-1, paths.clamp(min=0))
    return -torch.where(paths >= 0, log_p, torch.zeros_like(log_p)).sum(-1)


def path_probability(cond: torch.Tensor, labels: torch.Tensor, tree: WordTree | TreeTensors) -> torch.Tensor:
    """P(label) per row: the product of the conditional probabilities ``cond`` [..., C] on the label's path.

    Darknet's ``get_hierarchy_probability`` (tree.c:27-35); with labels [...] -> [...]. Darknet's
    classification-only truths train the prediction with the highest objectness x P(label)
    (region_layer.c:207-227).
    """
    t = _prepare(cond, tree, "path_probability")
    paths = _label_paths(labels, cond, t, "path_probability")
    p = cond.gather(-1, paths.clamp(min=0))
    return torch.where(paths >= 0, p, torch.ones_like(p)).prod(-1)


def tree_walk(probs: torch.Tensor, tree: WordTree | TreeTensors, thresh: float = 0.5) -> torch.Tensor:
    """The predicted node per row: Darknet's ``hierarchy_top_prediction`` (tree.c:53-81), vectorised over rows.

    Start in the root group (group 0) with p = 1. In the current group take the highest value v (the first one
    on ties); if p * v > thresh, accept that node (p *= v): return it if it is a leaf, else continue in its
    children's group. Otherwise stop: in the root group return that best root anyway (even below ``thresh``),
    deeper return the last accepted node (the parent of the group). Returns int64 [...] for ``probs`` [..., C].

    Which probabilities: passing the conditional probabilities (:func:`group_softmax`) makes p the absolute
    probability of the accepted node, so the walk descends while P(node) > thresh: the rule of the YOLO9000 paper
    and what we recommend. Darknet's HEAD (and every version since ``hierarchy_top_prediction`` appeared, commit
    d2dece3d) first turns the scores into absolute probabilities (region_layer.c:414 ``hierarchy_predictions``)
    and walks those (region_layer.c:422), so its p multiplies absolute probabilities, i.e. each ancestor's
    conditional once per level below it, and it stops higher in the tree. The argmax in each group is the same
    either way, up to rounding (siblings share their parent's factor); pass ``absolute_probabilities(cond)`` to
    reproduce Darknet's detections exactly. Both are this one port; it takes the input as given.

    Darknet details kept: a group's best value starts at 0 (``max = 0``, tree.c:59), so NaN and values <= 0
    never win (a group with no positive value yields node 0 in the root group, and stops deeper); the comparison
    is strict; p is multiplied in the input's dtype. ``thresh`` must be >= 0 (below 0 Darknet's loop can
    accept a zero forever).
    """
    if not thresh >= 0:
        raise ValueError(f"tree_walk: thresh must be >= 0, got {thresh}")
    t = _prepare(probs, tree, "tree_walk")
    x = probs.detach().reshape(-1, t.num_nodes)
    x = torch.where(torch.isnan(x), torch.zeros_like(x), x)  # Darknet's `val > max` skips NaN
    group_max = _group_reduce(x, t, "max").clamp(min=0)  # [R, G]; Darknet's max starts at 0
    is_best = (x == group_max.index_select(-1, t.group_of)) & (x > 0)
    # the first node holding its group's max (Darknet takes the first on ties); node 0 where nothing is positive.
    node = torch.arange(t.num_nodes, device=x.device).expand_as(x)
    first_best = _group_reduce(torch.where(is_best, node, torch.full_like(node, t.num_nodes)), t, "min").long()
    first_best = torch.where(first_best == t.num_nodes, torch.zeros_like(first_best), first_best)

    rows = torch.arange(x.shape[0], device=x.device)
    group = torch.zeros_like(rows)
    p = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    result = torch.zeros_like(rows)
    done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(t.paths.shape[1]):  # each acceptance descends one level: at most max depth + 1 steps
        best, value = first_best[rows, group], group_max[rows, group]
        candidate = p * value
        accept = ~done & (candidate > thresh)
        stop = ~done & ~accept
        last_accepted = t.parents.index_select(0, t.group_offsets.index_select(0, group))
        result = torch.where(stop, torch.where(group == 0, best, last_accepted), result)
        child = t.child_group.index_select(0, best)
        at_leaf = accept & (child < 0)
        result = torch.where(at_leaf, best, result)
        p = torch.where(accept, candidate, p)
        group = torch.where(accept & (child >= 0), child, group)
        done = done | stop | at_leaf
    return result.reshape(probs.shape[:-1])
