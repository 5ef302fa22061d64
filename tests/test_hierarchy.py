"""The hierarchical softmax operations against plain-Python ports of Darknet's C (pjreddie f6afaabc).

Ports, loop for loop: ``softmax_tree`` (blas_kernels.cu:959-987, one softmax per group), ``hierarchy_predictions``
(tree.c:37-51), ``get_hierarchy_probability`` (tree.c:27-35), the hierarchical branch of ``delta_region_class``
(region_layer.c:115-128) and ``hierarchy_top_prediction`` (tree.c:53-81). Everything runs in float64 so that the
ports (Python floats) and the vectorised code do the same arithmetic.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from yolov2.errors import DatasetError
from yolov2.hierarchy import (
    TreeTensors,
    absolute_probabilities,
    group_log_softmax,
    group_softmax,
    hierarchical_class_loss,
    labels_to_nodes,
    path_probability,
    tree_walk,
)
from yolov2.wordtree import WordTree, read_tree

# node: 0 animal, 1 plant, 2 dog, 3 cat, 4 oak, 5 poodle, 6 beagle, 7 pug, 8 toy_poodle
# groups: 0 [animal, plant], 1 [dog, cat], 2 [oak], 3 [poodle, beagle, pug], 4 [toy_poodle]
HAND = WordTree(
    ("animal", "plant", "dog", "cat", "oak", "poodle", "beagle", "pug", "toy_poodle"),
    (-1, -1, 0, 0, 1, 2, 2, 2, 5),
)
ANIMAL, PLANT, DOG, CAT, OAK, POODLE, BEAGLE, PUG, TOY = range(9)


@pytest.fixture(scope="module")
def tree9k(shared_data: Path) -> WordTree:
    path = shared_data / "darknet_cfg" / "9k.tree"
    if not path.is_file():
        pytest.skip(f"Darknet's 9k.tree not found at {path}")
    return read_tree(path)


@pytest.fixture(params=["hand", "9k"])
def tree(request: pytest.FixtureRequest) -> WordTree:
    return HAND if request.param == "hand" else request.getfixturevalue("tree9k")


def random_logits(tree: WordTree, rows: int, scale: float = 2.0, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, tree.num_nodes, generator=gen, dtype=torch.float64) * scale


# ------------------------------------------------------------------------------------------------------------
# Darknet ports
# ------------------------------------------------------------------------------------------------------------


def darknet_softmax_tree(x: list[float], tree: WordTree) -> list[float]:
    out = [0.0] * len(x)
    for offset, size in zip(tree.group_offsets, tree.group_sizes):
        largest = max(x[offset : offset + size])
        e = [math.exp(v - largest) for v in x[offset : offset + size]]
        total = sum(e)
        for i in range(size):
            out[offset + i] = e[i] / total
    return out


def darknet_hierarchy_predictions(pred: list[float], tree: WordTree) -> list[float]:
    out = list(pred)
    for j in range(len(out)):
        parent = tree.parents[j]
        if parent >= 0:
            out[j] *= out[parent]
    return out


def darknet_get_hierarchy_probability(x: list[float], tree: WordTree, c: int) -> float:
    p = 1.0
    while c >= 0:
        p = p * x[c]
        c = tree.parents[c]
    return p


def darknet_delta_region_class(output: list[float], cls: int, tree: WordTree, scale: float = 1.0) -> list[float]:
    delta = [0.0] * len(output)  # forward_region_layer zeroes l.delta first (region_layer.c:188)
    while cls >= 0:
        g = tree.group_of[cls]
        offset = tree.group_offsets[g]
        for i in range(tree.group_sizes[g]):
            delta[offset + i] = scale * (0 - output[offset + i])
        delta[cls] = scale * (1 - output[cls])
        cls = tree.parents[cls]
    return delta


def darknet_hierarchy_top_prediction(pred: list[float], tree: WordTree, thresh: float) -> int:
    p = 1.0
    group = 0
    while True:
        best = 0.0
        max_i = 0
        for i in range(tree.group_sizes[group]):
            index = i + tree.group_offsets[group]
            val = pred[index]
            if val > best:
                max_i = index
                best = val
        if p * best > thresh:
            p = p * best
            group = tree.child_group[max_i]
            if tree.child_group[max_i] < 0:
                return max_i
        elif group == 0:
            return max_i
        else:
            return tree.parents[tree.group_offsets[group]]


# ------------------------------------------------------------------------------------------------------------
# group softmax and absolute probabilities
# ------------------------------------------------------------------------------------------------------------


def test_group_softmax_matches_darknet_and_sums_to_one(tree: WordTree) -> None:
    logits = random_logits(tree, 3, scale=4.0)
    cond = group_softmax(logits, tree)
    for row in range(3):
        expected = torch.tensor(darknet_softmax_tree(logits[row].tolist(), tree), dtype=torch.float64)
        torch.testing.assert_close(cond[row], expected, rtol=1e-12, atol=1e-15)
    sums = torch.zeros(3, tree.num_groups, dtype=torch.float64).index_add(-1, torch.tensor(tree.group_of), cond)
    torch.testing.assert_close(sums, torch.ones_like(sums))
    torch.testing.assert_close(group_log_softmax(logits, tree).exp(), cond)


def test_group_softmax_is_stable_and_keeps_leading_dims() -> None:
    logits = torch.full((2, 3, HAND.num_nodes), 1e4)
    logits[..., CAT] = -1e4
    cond = group_softmax(logits, HAND)
    assert cond.shape == (2, 3, 9) and torch.isfinite(cond).all()
    torch.testing.assert_close(cond[0, 0], torch.tensor([0.5, 0.5, 1.0, 0.0, 1.0, 1 / 3, 1 / 3, 1 / 3, 1.0]))
    assert torch.isfinite(group_log_softmax(logits, HAND)[..., DOG]).all()


def test_absolute_probabilities_match_darknet_and_children_sum_to_parent(tree: WordTree) -> None:
    cond = group_softmax(random_logits(tree, 4, seed=1), tree)
    absolute = absolute_probabilities(cond, tree)
    for row in range(4):
        expected = torch.tensor(darknet_hierarchy_predictions(cond[row].tolist(), tree), dtype=torch.float64)
        torch.testing.assert_close(absolute[row], expected, rtol=1e-12, atol=1e-300)
    parents = torch.tensor(tree.parents)
    child = parents >= 0
    children_sum = torch.zeros_like(absolute).index_add(-1, parents[child], absolute[:, child])
    inner = torch.tensor([g >= 0 for g in tree.child_group])
    torch.testing.assert_close(children_sum[:, inner], absolute[:, inner], rtol=1e-10, atol=1e-300)
    torch.testing.assert_close(absolute[:, ~child].sum(-1), torch.ones(4, dtype=torch.float64))  # the roots


def test_tree_tensors_are_reusable_and_shapes_are_checked() -> None:
    tensors = TreeTensors.from_tree(HAND)
    assert tensors.to("cpu") is tensors
    assert tensors.paths.tolist()[TOY] == [TOY, POODLE, DOG, ANIMAL]
    assert tensors.paths.tolist()[OAK] == [OAK, PLANT, -1, -1]
    logits = random_logits(HAND, 5)
    torch.testing.assert_close(group_softmax(logits, tensors), group_softmax(logits, HAND))
    with pytest.raises(ValueError, match="tree's 9 nodes"):
        group_softmax(torch.zeros(2, 8), HAND)


# ------------------------------------------------------------------------------------------------------------
# path probability and the class loss
# ------------------------------------------------------------------------------------------------------------


def labels_for(tree: WordTree) -> list[int]:
    """A root, an inner node, the deepest leaf and a shallow leaf of ``tree``."""
    deepest = max(range(tree.num_nodes), key=lambda c: tree.depth[c])
    inner = next(c for c in range(tree.num_nodes) if tree.depth[c] >= 2 and tree.child_group[c] >= 0)
    shallow_leaf = min(tree.leaves, key=lambda c: tree.depth[c])
    return [0, inner, deepest, shallow_leaf]


def test_path_probability_matches_darknet(tree: WordTree) -> None:
    labels = labels_for(tree)
    cond = group_softmax(random_logits(tree, len(labels), seed=2), tree)
    got = path_probability(cond, torch.tensor(labels), tree)
    for row, label in enumerate(labels):
        assert got[row].item() == pytest.approx(darknet_get_hierarchy_probability(cond[row].tolist(), tree, label))
    torch.testing.assert_close(got, absolute_probabilities(cond, tree)[torch.arange(len(labels)), labels])


def test_class_loss_gradient_is_minus_darknet_delta(tree: WordTree) -> None:
    labels = labels_for(tree)
    logits = random_logits(tree, len(labels), seed=3).requires_grad_(True)
    loss = hierarchical_class_loss(logits, torch.tensor(labels), tree)
    assert loss.shape == (len(labels),)
    loss.sum().backward()
    assert logits.grad is not None
    cond = group_softmax(logits.detach(), tree)
    for row, label in enumerate(labels):
        delta = torch.tensor(darknet_delta_region_class(cond[row].tolist(), label, tree), dtype=torch.float64)
        torch.testing.assert_close(logits.grad[row], -delta, rtol=1e-10, atol=1e-14)
        # non-zero exactly in the groups on the label's path
        on_path = torch.zeros(tree.num_nodes, dtype=torch.bool)
        for node in tree.path(label):
            g = tree.group_of[node]
            on_path[tree.group_offsets[g] : tree.group_offsets[g] + tree.group_sizes[g]] = True
        assert (logits.grad[row][~on_path] == 0).all()
        assert (logits.grad[row][on_path] != 0).any()
        # the loss is -log P(label)
        p = darknet_get_hierarchy_probability(cond[row].tolist(), tree, label)
        assert loss[row].item() == pytest.approx(-math.log(p), rel=1e-10)


def test_class_loss_hand_values_and_checks() -> None:
    logits = torch.zeros(2, 2, HAND.num_nodes)  # uniform within each group
    labels = torch.tensor([[ANIMAL, TOY], [PUG, OAK]])
    loss = hierarchical_class_loss(logits, labels, HAND)
    expected = torch.tensor(
        [[math.log(2), math.log(2) + math.log(2) + math.log(3) + 0.0], [math.log(2) * 2 + math.log(3), math.log(2)]]
    )
    torch.testing.assert_close(loss, expected)
    with pytest.raises(DatasetError, match="label 9 is not a tree node"):
        hierarchical_class_loss(logits[0], torch.tensor([0, 9]), HAND)
    with pytest.raises(DatasetError, match="label -1"):
        path_probability(logits[0], torch.tensor([-1, 0]), HAND)
    with pytest.raises(ValueError, match="must match"):
        hierarchical_class_loss(logits, torch.tensor([0, 1]), HAND)
    with pytest.raises(ValueError, match="integer tree node indices"):
        hierarchical_class_loss(logits[0], torch.tensor([0.0, 1.0]), HAND)


# ------------------------------------------------------------------------------------------------------------
# tree walk
# ------------------------------------------------------------------------------------------------------------


def hand_cond(roots: tuple[float, float], dogcat: tuple[float, float], dogs: tuple[float, float, float]) -> list[float]:
    animal, plant = roots
    dog, cat = dogcat
    poodle, beagle, pug = dogs
    return [animal, plant, dog, cat, 1.0, poodle, beagle, pug, 1.0]


WALK_CASES = [
    # (conditional probabilities, thresh, node, where the walk stops)
    (hand_cond((0.4, 0.6), (0.8, 0.2), (0.7, 0.2, 0.1)), 0.7, PLANT, "root group: best root even below thresh"),
    (hand_cond((0.9, 0.1), (0.8, 0.2), (0.5, 0.3, 0.2)), 0.5, DOG, "middle: poodle 0.36 < 0.5, back to dog"),
    (hand_cond((0.9, 0.1), (0.8, 0.2), (0.7, 0.2, 0.1)), 0.5, TOY, "deepest leaf: 0.9*0.8*0.7*1 = 0.504"),
    (hand_cond((0.2, 0.8), (0.5, 0.5), (0.4, 0.3, 0.3)), 0.5, OAK, "shallow leaf under plant"),
    (hand_cond((0.9, 0.1), (0.55, 0.45), (0.7, 0.2, 0.1)), 0.5, ANIMAL, "middle: dog 0.9*0.55 = 0.495 < 0.5"),
    (hand_cond((0.9, 0.1), (0.5, 0.5), (0.7, 0.2, 0.1)), 0.4, DOG, "tie between dog and cat: the first wins"),
    (hand_cond((0.0, 0.0), (0.5, 0.5), (0.7, 0.2, 0.1)), 0.0, ANIMAL, "nothing positive: node 0"),
    (hand_cond((math.nan, 0.9), (0.5, 0.5), (0.7, 0.2, 0.1)), 0.5, OAK, "NaN never wins (val > max)"),
    (hand_cond((0.9, 0.1), (0.8, 0.2), (0.7, 0.2, 0.1)), 0.0, TOY, "thresh 0: always down to a leaf"),
]


@pytest.mark.parametrize(("cond", "thresh", "node", "why"), WALK_CASES)
def test_tree_walk_constructed(cond: list[float], thresh: float, node: int, why: str) -> None:
    assert darknet_hierarchy_top_prediction(cond, HAND, thresh) == node, why
    assert tree_walk(torch.tensor([cond], dtype=torch.float64), HAND, thresh).tolist() == [node], why


def test_tree_walk_all_cases_in_one_batch() -> None:
    cond = torch.tensor([[c[0] for c in WALK_CASES]], dtype=torch.float64).reshape(1, len(WALK_CASES), 9)
    walk = tree_walk(cond, HAND, 0.5)
    assert walk.shape == (1, len(WALK_CASES)) and walk.dtype == torch.int64
    assert walk[0].tolist() == [darknet_hierarchy_top_prediction(c[0], HAND, 0.5) for c in WALK_CASES]


def test_tree_walk_on_absolute_probabilities_is_darknet_head() -> None:
    """Darknet's detector walks absolute probabilities (region_layer.c:414 then :422): it stops higher."""
    cond = torch.tensor([hand_cond((0.9, 0.1), (0.8, 0.2), (0.7, 0.2, 0.1))], dtype=torch.float64)
    assert tree_walk(cond, HAND, 0.5).tolist() == [TOY]  # P(toy_poodle) = 0.504 > 0.5
    # on absolute probabilities p = 0.9 * 0.72 * 0.504 = 0.327 < 0.5 after dog
    assert tree_walk(absolute_probabilities(cond, HAND), HAND, 0.5).tolist() == [DOG]


@pytest.mark.parametrize("scale", [1.0, 3.0, 8.0])
@pytest.mark.parametrize("absolute", [False, True])
def test_tree_walk_matches_darknet_on_random_inputs(tree: WordTree, scale: float, absolute: bool) -> None:
    rows = 64
    cond = group_softmax(random_logits(tree, rows, scale=scale, seed=int(scale)), tree)
    probs = absolute_probabilities(cond, tree) if absolute else cond
    for thresh in (0.0, 0.2, 0.5, 0.9):
        got = tree_walk(probs, tree, thresh).tolist()
        expected = [darknet_hierarchy_top_prediction(probs[r].tolist(), tree, thresh) for r in range(rows)]
        assert got == expected, thresh


def test_tree_walk_reaches_every_kind_of_stop(tree9k: WordTree) -> None:
    """The random comparison above is meaningful: on the 9k tree it stops at roots, inner nodes and leaves."""
    cond = group_softmax(random_logits(tree9k, 256, scale=8.0, seed=8), tree9k)
    walk = tree_walk(cond, tree9k, 0.5).tolist()
    leaves = set(tree9k.leaves)
    assert any(tree9k.depth[c] == 0 for c in walk)
    assert any(tree9k.depth[c] > 0 and c not in leaves for c in walk)
    assert any(c in leaves for c in walk)


def test_tree_walk_rejects_negative_thresh() -> None:
    with pytest.raises(ValueError, match="thresh must be >= 0"):
        tree_walk(torch.zeros(1, 9), HAND, -0.1)


def test_labels_to_nodes_maps_real_rows_and_keeps_padding() -> None:
    targets = torch.tensor(
        [[[1.0, 0.5, 0.5, 0.2, 0.2], [-1.0, 0, 0, 0, 0]], [[0.0, 0.1, 0.2, 0.3, 0.4], [2.0, 1, 1, 1, 1]]]
    )
    mapped = labels_to_nodes(targets, torch.tensor([7, 3, 5]))
    assert mapped[..., 0].tolist() == [[3.0, -1.0], [7.0, 5.0]]
    assert torch.equal(mapped[..., 1:], targets[..., 1:]) and labels_to_nodes(targets, None) is targets
    with pytest.raises(DatasetError, match="label 2 has no tree node: the model maps 2 classes"):
        labels_to_nodes(targets, torch.tensor([7, 3]))
