"""The WordTree parser and its derived structure, against a hand-built tree and Darknet's own ``9k.tree``.

The group numbering follows Darknet's ``read_tree`` (src/tree.c:83-139 at pjreddie f6afaabc): groups are runs of
equal parent indices in file order, group 0 holds the roots, ``child`` maps a node to its children's group.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from yolov2.errors import DatasetError
from yolov2.wordtree import (
    WordTree,
    ancestors_at_depth,
    map_class_names,
    parse_class_map,
    parse_tree,
    read_class_map,
    read_tree,
    write_tree,
)

# node: 0 animal, 1 plant, 2 dog, 3 cat, 4 oak, 5 poodle, 6 beagle, 7 pug, 8 toy_poodle
HAND_TREE = """animal -1
plant -1
dog 0
cat 0
oak 1
poodle 2
beagle 2
pug 2
toy_poodle 5
"""


@pytest.fixture(scope="module")
def hand() -> WordTree:
    return parse_tree(HAND_TREE, "hand.tree")


@pytest.fixture(scope="module")
def cfg_dir(shared_data: Path) -> Path:
    folder = shared_data / "darknet_cfg"
    if not (folder / "9k.tree").is_file():
        pytest.skip(f"Darknet's 9k.tree not found in {folder}")
    return folder


@pytest.fixture(scope="module")
def tree9k(cfg_dir: Path) -> WordTree:
    return read_tree(cfg_dir / "9k.tree")


# ------------------------------------------------------------------------------------------------------------
# the hand tree, every derived field by hand
# ------------------------------------------------------------------------------------------------------------


def test_hand_tree_structure(hand: WordTree) -> None:
    assert hand.names == ("animal", "plant", "dog", "cat", "oak", "poodle", "beagle", "pug", "toy_poodle")
    assert hand.parents == (-1, -1, 0, 0, 1, 2, 2, 2, 5)
    assert hand.num_nodes == 9
    assert hand.num_groups == 5
    # groups: [animal, plant] [dog, cat] [oak] [poodle, beagle, pug] [toy_poodle]
    assert hand.group_of == (0, 0, 1, 1, 2, 3, 3, 3, 4)
    assert hand.group_offsets == (0, 2, 4, 5, 8)
    assert hand.group_sizes == (2, 2, 1, 3, 1)
    assert hand.child_group == (1, 2, 3, -1, -1, 4, -1, -1, -1)
    assert hand.leaves == (3, 4, 6, 7, 8)
    assert hand.depth == (0, 0, 1, 1, 1, 2, 2, 2, 3)
    assert hand.max_depth == 3


def test_hand_tree_paths(hand: WordTree) -> None:
    assert hand.path(8) == (8, 5, 2, 0)
    assert hand.path(6) == (6, 2, 0)
    assert hand.path(4) == (4, 1)
    assert hand.path(1) == (1,)
    with pytest.raises(IndexError, match="node 9"):
        hand.path(9)
    with pytest.raises(IndexError):
        hand.path(-1)


def test_darknet_group_numbering_port(hand: WordTree) -> None:
    """A line-by-line port of Darknet's read_tree (tree.c:83-132) gives the same groups, children and leaves."""
    parents = hand.parents
    last_parent, group_size, groups = -1, 0, 0
    group, child, offsets, sizes = [], [-1] * len(parents), [], []
    for n, parent in enumerate(parents):
        if parent != last_parent:
            groups += 1
            offsets.append(n - group_size)
            sizes.append(group_size)
            group_size = 0
            last_parent = parent
        group.append(groups)
        if parent >= 0:
            child[parent] = groups
        group_size += 1
    offsets.append(len(parents) - group_size)
    sizes.append(group_size)
    leaf = [1] * len(parents)
    for p in parents:
        if p >= 0:
            leaf[p] = 0
    assert tuple(group) == hand.group_of
    assert tuple(child) == hand.child_group
    assert tuple(offsets) == hand.group_offsets
    assert tuple(sizes) == hand.group_sizes
    assert tuple(i for i, v in enumerate(leaf) if v) == hand.leaves


def test_write_tree_round_trip(hand: WordTree, tmp_path: Path) -> None:
    path = tmp_path / "out.tree"
    path.write_text("stale contents\n")
    write_tree(hand, path)
    assert path.read_text() == HAND_TREE
    assert read_tree(path) == hand
    assert [p.name for p in tmp_path.iterdir()] == ["out.tree"]  # no temporary file left behind


def test_parse_accepts_crlf_tabs_and_bom(hand: WordTree, tmp_path: Path) -> None:
    text = HAND_TREE.replace(" ", "\t").replace("\n", "\r\n")
    assert parse_tree(text, "crlf.tree") == hand
    path = tmp_path / "bom.tree"
    path.write_bytes(b"\xef\xbb\xbf" + HAND_TREE.encode())
    assert read_tree(path) == hand


def test_duplicate_names_are_allowed_as_in_darknet() -> None:
    tree = parse_tree("a -1\nb -1\nx 0\nx 1\n", "dup.tree")
    assert tree.names == ("a", "b", "x", "x")
    assert tree.group_of == (0, 0, 1, 2)


# ------------------------------------------------------------------------------------------------------------
# validation: every error names the file and the line
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("a -1\nb\n", 2, "expected '<name> <parent index>'"),
        ("a -1\nb 0 extra\n", 2, "expected '<name> <parent index>'"),
        ("a -1\nb zero\n", 2, "expected '<name> <parent index>'"),
        ("a -1\nb 1_0\n", 2, "expected '<name> <parent index>'"),
        ("a -1\n\nb 0\n", 2, "expected '<name> <parent index>'"),
        ("a -1\nb 0\nc 7\n", 3, "out of range"),
        ("a -1\nb -2\n", 2, "out of range"),
        ("a 0\n", 1, "not before its child"),
        ("a -1\nb 1\n", 2, "not before its child"),
        ("a -1\nb 2\nc 0\n", 2, "not before its child"),
        ("a -1\nb -1\nc 0\nd 1\ne 0\n", 5, "children of node 0 are not contiguous"),
        ("a -1\nc 0\nb -1\n", 3, "roots (parent -1) are not contiguous"),
    ],
)
def test_tree_errors_name_file_and_line(tmp_path: Path, text: str, line: int, problem: str) -> None:
    path = tmp_path / "bad.tree"
    path.write_text(text)
    with pytest.raises(DatasetError, match=re.escape(f"bad.tree:{line}: ")) as info:
        read_tree(path)
    assert problem in str(info.value)
    with pytest.raises(DatasetError, match=re.escape(f"src.tree:{line}: ")):
        parse_tree(text, "src.tree")


@pytest.mark.parametrize("text", ["", "\n", "  \n\n"])
def test_empty_tree_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.tree"
    path.write_text(text)
    with pytest.raises(DatasetError, match=r"empty\.tree: empty tree file"):
        read_tree(path)


def test_missing_tree_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nope\.tree: tree file is missing"):
        read_tree(tmp_path / "nope.tree")


@pytest.mark.parametrize(
    ("names", "parents", "problem"),
    [
        ((), (), "no nodes"),
        (("a", "b"), (-1,), "2 names but 1 parent"),
        (("a", "b c"), (-1, -1), "names are non-empty, without spaces"),
        (("a", ""), (-1, -1), "names are non-empty, without spaces"),
        (("a", "b"), (-1, 1), "node 1 (b): parent index 1 is not before"),
        (("a", "b", "c"), (-1, 0, -1), "node 2 (c): the roots"),
    ],
)
def test_wordtree_constructor_checks(names: tuple[str, ...], parents: tuple[int, ...], problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        WordTree(names, parents)


# ------------------------------------------------------------------------------------------------------------
# class maps
# ------------------------------------------------------------------------------------------------------------


def test_class_map_and_errors(hand: WordTree, tmp_path: Path) -> None:
    path = tmp_path / "ok.map"
    path.write_text("2\n3\n8\n")
    assert read_class_map(path, hand) == (2, 3, 8)
    for text, line, problem in [
        ("2\nthree\n", 2, "expected one tree node index"),
        ("2\n3\n9\n", 3, "node index 9 out of range (0 to 8)"),
        ("-1\n", 1, "node index -1 out of range"),
        ("2\n\n3\n", 2, "expected one tree node index"),
    ]:
        bad = tmp_path / "bad.map"
        bad.write_text(text)
        with pytest.raises(DatasetError, match=re.escape(f"bad.map:{line}: ")) as info:
            read_class_map(bad, hand)
        assert problem in str(info.value)
    with pytest.raises(DatasetError, match=r"e\.map: empty class map"):
        parse_class_map("\n", "e.map", hand)
    with pytest.raises(DatasetError, match=r"gone\.map: class map is missing"):
        read_class_map(tmp_path / "gone.map", hand)


def test_map_class_names(hand: WordTree) -> None:
    assert map_class_names(["pug", "animal", "oak"], hand) == (7, 0, 4)
    with pytest.raises(DatasetError, match="2 of 3 class names are not in the tree: 'horse', 'fern'"):
        map_class_names(["horse", "dog", "fern"], hand)
    dup = parse_tree("a -1\nb -1\nx 0\nx 1\n", "dup.tree")
    with pytest.raises(DatasetError, match=re.escape("'x' (nodes 2, 3)")):
        map_class_names(["a", "x"], dup)


# ------------------------------------------------------------------------------------------------------------
# Darknet's 9k tree and maps
# ------------------------------------------------------------------------------------------------------------


def test_9k_tree(tree9k: WordTree) -> None:
    assert tree9k.num_nodes == 9418
    assert tree9k.num_groups == 1846
    assert len(tree9k.leaves) == 7573
    assert all(p < i for i, p in enumerate(tree9k.parents))
    assert tree9k.group_sizes[0] == 4 and set(tree9k.parents[:4]) == {-1}  # four roots, in group 0
    assert sum(tree9k.group_sizes) == tree9k.num_nodes
    assert all(tree9k.group_of[tree9k.group_offsets[g]] == g for g in range(tree9k.num_groups))
    # every non-root group is the child group of exactly the parent of its nodes
    for g in range(1, tree9k.num_groups):
        parent = tree9k.parents[tree9k.group_offsets[g]]
        assert tree9k.child_group[parent] == g
    assert max(len(tree9k.path(c)) for c in range(tree9k.num_nodes)) == tree9k.max_depth + 1 == 17


def test_9k_maps_and_cfg(tree9k: WordTree, cfg_dir: Path) -> None:
    coco = read_class_map(cfg_dir / "coco9k.map", tree9k)
    assert len(coco) == 80
    assert all(0 <= c < tree9k.num_nodes for c in coco)
    assert len(read_class_map(cfg_dir / "inet9k.map", tree9k)) == 200
    cfg = (cfg_dir / "yolo9000.cfg").read_text()
    assert re.search(r"^classes\s*=\s*9418\s*$", cfg, re.M)  # the cfg's class count is the tree's node count


def test_ancestors_at_depth(hand: WordTree) -> None:
    # classes: pug, toy_poodle, cat, oak, animal
    classes = [7, 8, 3, 4, 0]
    assert ancestors_at_depth(hand, classes, 0) == ([0, 1], [0, 0, 0, 1, 0])  # animal, plant
    assert ancestors_at_depth(hand, classes, 1) == ([2, 3, 4], [0, 0, 1, 2, -1])  # dog, cat, oak; animal is above
    assert ancestors_at_depth(hand, classes, 2) == ([5, 7], [1, 0, -1, -1, -1])  # poodle, pug
    assert ancestors_at_depth(hand, classes, 9) == ([], [-1] * 5)
    with pytest.raises(ValueError, match="depth must be >= 0"):
        ancestors_at_depth(hand, classes, -1)
