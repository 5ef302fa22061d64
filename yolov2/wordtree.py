"""YOLO9000's WordTree: Darknet's ``.tree`` and ``.map`` files, and the tree's groups, paths and depths.

A WordTree is a forest of class nodes; each node's class score is the conditional probability P(node | parent),
normalised by a softmax over the node's siblings (its *group*, see :mod:`yolov2.hierarchy`). Darknet stores it
as ``9k.tree``: one ``<name> <parent index>`` line per node, ``-1`` for a root (src/tree.c ``read_tree``, pjreddie
f6afaabc). Darknet numbers the groups by *runs* of equal parent indices in file order (tree.c:105-118), so the
rules below make every parent's children one contiguous run, i.e. one group, and put the roots first (group 0,
where Darknet's tree walk starts, tree.c:56):

* every line is exactly ``<name> <parent index>`` (Darknet's ``sscanf("%s %d")`` would also take a line without
  an index as a root, and a blank line as a root with an empty name; both would silently add a node here);
* ``-1 <= parent < own index``: parents come before their children, which rules out cycles (every path towards a
  root strictly decreases the index) and makes the first node a root;
* siblings are contiguous: once another group has started, a parent (or the roots) gets no more children.
  Darknet would split them into two groups and keep only the last as the parent's ``child`` (tree.c:117).

Names may repeat (Darknet does not check; ``9k.tree`` has none); :func:`map_class_names` refuses a name that is
ambiguous. A class map (``coco9k.map``) holds one tree node index per line, line i for dataset class i
(utils.c ``read_map``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from yolov2.data.paths import read_regular_file
from yolov2.errors import DatasetError
from yolov2.io import atomic_write_text

__all__ = ["WordTree", "map_class_names", "parse_class_map", "parse_tree", "read_class_map", "read_tree", "write_tree"]

_INT = re.compile(r"-?[0-9]+")


class _ParentChecker:
    """Checks parent indices one node at a time, in file order, so a parser can name the first bad line."""

    def __init__(self, num_nodes: int) -> None:
        self.num_nodes = num_nodes
        self.index = 0
        self.prev_parent = -1
        self.started: set[int] = set()  # parents (and -1 for the roots) whose group has begun

    def check(self, parent: int) -> str | None:
        """The problem with the next node's ``parent`` (None if fine); advances to the next node."""
        i, n = self.index, self.num_nodes
        self.index += 1
        if parent < -1 or parent >= n:
            return f"parent index {parent} out of range (-1 for a root, or 0 to {n - 1})"
        if parent >= i:
            return (
                f"parent index {parent} is not before its child (node {i}): parents must come first, "
                "which also rules out cycles"
            )
        if i == 0 or parent != self.prev_parent:
            if parent in self.started:
                whose = "the roots (parent -1)" if parent < 0 else f"the children of node {parent}"
                return (
                    f"{whose} are not contiguous: another group (parent {self.prev_parent}) comes between them; "
                    "siblings must be consecutive lines"
                )
            self.started.add(parent)
        self.prev_parent = parent
        return None


@dataclass(frozen=True)
class WordTree:
    """Node names and parent indices (-1: root), with the structure Darknet derives from them (tree.c:83-139).

    Derived once at construction: ``group_of`` (node -> group), ``group_offsets`` and ``group_sizes`` (each group
    is a contiguous run of siblings, numbered in file order; group 0 holds the roots), ``child_group`` (node ->
    the group of its children, -1 for a leaf), ``leaves`` (ascending) and ``depth`` (0 for a root). Construction
    checks the rules of the module docstring and raises ``ValueError`` naming the first bad node.
    """

    names: tuple[str, ...]
    parents: tuple[int, ...]
    group_of: tuple[int, ...] = field(init=False, repr=False, compare=False)
    group_offsets: tuple[int, ...] = field(init=False, repr=False, compare=False)
    group_sizes: tuple[int, ...] = field(init=False, repr=False, compare=False)
    child_group: tuple[int, ...] = field(init=False, repr=False, compare=False)
    leaves: tuple[int, ...] = field(init=False, repr=False, compare=False)
    depth: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names, parents = tuple(self.names), tuple(int(p) for p in self.parents)
        if not names:
            raise ValueError("WordTree: no nodes")
        if len(names) != len(parents):
            raise ValueError(f"WordTree: {len(names)} names but {len(parents)} parent indices")
        checker = _ParentChecker(len(parents))
        for i, (name, parent) in enumerate(zip(names, parents)):
            if not isinstance(name, str) or not name or name.split() != [name]:
                raise ValueError(f"WordTree: node {i} has the name {name!r}; names are non-empty, without spaces")
            problem = checker.check(parent)
            if problem:
                raise ValueError(f"WordTree: node {i} ({name}): {problem}")

        group_of: list[int] = []
        offsets: list[int] = []
        sizes: list[int] = []
        child_group = [-1] * len(parents)
        depth: list[int] = []
        for i, parent in enumerate(parents):
            if i == 0 or parent != parents[i - 1]:
                offsets.append(i)
                sizes.append(0)
            sizes[-1] += 1
            group_of.append(len(offsets) - 1)
            if parent >= 0:
                child_group[parent] = group_of[-1]
            depth.append(0 if parent < 0 else depth[parent] + 1)

        set_ = object.__setattr__  # frozen: the derived fields are set once, here
        set_(self, "names", names)
        set_(self, "parents", parents)
        set_(self, "group_of", tuple(group_of))
        set_(self, "group_offsets", tuple(offsets))
        set_(self, "group_sizes", tuple(sizes))
        set_(self, "child_group", tuple(child_group))
        set_(self, "leaves", tuple(i for i, g in enumerate(child_group) if g < 0))
        set_(self, "depth", tuple(depth))

    @property
    def num_nodes(self) -> int:
        return len(self.parents)

    @property
    def num_groups(self) -> int:
        return len(self.group_offsets)

    @property
    def max_depth(self) -> int:
        """The largest node depth (roots: 0); a path holds at most ``max_depth + 1`` nodes."""
        return max(self.depth)

    def path(self, node: int) -> tuple[int, ...]:
        """The nodes from ``node`` up to its root, both included (the groups a class's loss and probability use)."""
        if not 0 <= node < self.num_nodes:
            raise IndexError(f"node {node} is not in the tree (0 to {self.num_nodes - 1})")
        out = [node]
        while self.parents[out[-1]] >= 0:
            out.append(self.parents[out[-1]])
        return tuple(out)


def _read_text(path: str | Path, what: str) -> str:
    try:
        return read_regular_file(path).decode("utf-8-sig")
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: {what} is missing") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read {what} ({e})") from e


def parse_tree(text: str, source: str) -> WordTree:
    """A WordTree from the text of a Darknet ``.tree`` file; ``source`` names the file in errors.

    Raises :class:`DatasetError` ``"<source>:<line>: <problem>"`` for the first malformed line (not exactly a name
    and an integer, blank), parent index out of range, parent not before its child or siblings not contiguous, and
    ``"<source>: ..."`` for a file without nodes.
    """
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise DatasetError(f"{source}: empty tree file (no nodes)")
    names: list[str] = []
    parents: list[int] = []
    checker = _ParentChecker(len(lines))
    for lineno, line in enumerate(lines, 1):
        fields = line.split()
        if len(fields) != 2 or not _INT.fullmatch(fields[1]):
            raise DatasetError(f"{source}:{lineno}: expected '<name> <parent index>', got {line!r}")
        parent = int(fields[1])
        problem = checker.check(parent)
        if problem:
            raise DatasetError(f"{source}:{lineno}: {fields[0]}: {problem}")
        names.append(fields[0])
        parents.append(parent)
    return WordTree(tuple(names), tuple(parents))


def read_tree(path: str | Path) -> WordTree:
    """Read a Darknet ``.tree`` file (see :func:`parse_tree` for the checks)."""
    return parse_tree(_read_text(path, "tree file"), str(path))


def write_tree(tree: WordTree, path: str | Path) -> None:
    """Write ``tree`` as a Darknet ``.tree`` file, atomically; :func:`read_tree` reads it back equal."""
    atomic_write_text(path, "".join(f"{name} {parent}\n" for name, parent in zip(tree.names, tree.parents)))


def parse_class_map(text: str, source: str, tree: WordTree) -> tuple[int, ...]:
    """Tree node per dataset class from the text of a Darknet map file (line i: the node of dataset class i).

    Raises :class:`DatasetError` ``"<source>:<line>: ..."`` for a line that is not one integer, or a node index
    outside the tree, and ``"<source>: ..."`` for an empty file. (Darknet's ``atoi`` would read such lines as 0.)
    """
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise DatasetError(f"{source}: empty class map (no classes)")
    out: list[int] = []
    for lineno, line in enumerate(lines, 1):
        value = line.strip()
        if not _INT.fullmatch(value):
            raise DatasetError(f"{source}:{lineno}: expected one tree node index, got {line!r}")
        node = int(value)
        if not 0 <= node < tree.num_nodes:
            raise DatasetError(f"{source}:{lineno}: node index {node} out of range (0 to {tree.num_nodes - 1})")
        out.append(node)
    return tuple(out)


def read_class_map(path: str | Path, tree: WordTree) -> tuple[int, ...]:
    """Read a Darknet class map (``coco9k.map``) for ``tree`` (see :func:`parse_class_map` for the checks)."""
    return parse_class_map(_read_text(path, "class map"), str(path), tree)


def map_class_names(names: Sequence[str], tree: WordTree) -> tuple[int, ...]:
    """The tree node of each dataset class name, matched by exact name.

    Raises :class:`DatasetError` listing every name that is not in the tree, or that names several nodes.
    """
    index: dict[str, list[int]] = {}
    for node, name in enumerate(tree.names):
        index.setdefault(name, []).append(node)
    missing = [n for n in names if n not in index]
    if missing:
        raise DatasetError(
            f"{len(missing)} of {len(names)} class names are not in the tree: {', '.join(map(repr, missing))}"
        )
    ambiguous = [n for n in names if len(index[n]) > 1]
    if ambiguous:
        raise DatasetError(
            "class names that name several tree nodes: "
            + ", ".join(f"{n!r} (nodes {', '.join(map(str, index[n]))})" for n in ambiguous)
        )
    return tuple(index[n][0] for n in names)


def ancestors_at_depth(tree: WordTree, nodes: Sequence[int], depth: int) -> tuple[list[int], list[int]]:
    """Scoring at one depth of the tree (0: the roots): ``level``, the distinct ancestors at ``depth`` of ``nodes``
    (a node at that depth is its own), in node order; and for each of ``nodes`` its ancestor's position in
    ``level``, or -1 for a node above that depth (it cannot be scored there)."""
    if depth < 0:
        raise ValueError(f"ancestors_at_depth: depth must be >= 0, got {depth}")
    ancestors = []
    for node in nodes:
        path = tree.path(node)  # node ... root: the ancestor at depth d is path[len(path) - 1 - d]
        ancestors.append(path[len(path) - 1 - depth] if depth < len(path) else -1)
    level = sorted({a for a in ancestors if a >= 0})
    position = {node: i for i, node in enumerate(level)}
    return level, [position[a] if a >= 0 else -1 for a in ancestors]
