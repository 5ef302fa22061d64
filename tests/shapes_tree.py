"""A small WordTree over the generated shapes for the YOLO9000 pipeline tests: two roots (round, angular), the
shapes under them, and optional leaves under a shape; siblings are made contiguous, as the .tree format needs."""

from __future__ import annotations

from yolov2.data.synthetic import SHAPE_CLASSES
from yolov2.wordtree import WordTree

ROUND = ("circle", "ellipse")


def shapes_tree(leaves: dict[str, list[str]] | None = None) -> WordTree:
    """round/angular -> the shapes -> ``leaves[shape]`` (e.g. ``{"circle": ["circle_red", "circle_blue"]}``)."""
    names = ["round", "angular", *SHAPE_CLASSES]
    parents = [-1, -1] + [0 if name in ROUND else 1 for name in SHAPE_CLASSES]
    for shape, children in (leaves or {}).items():
        names += children
        parents += [names.index(shape)] * len(children)
    order = sorted(range(len(names)), key=lambda i: (parents[i] >= 0, parents[i], i))  # siblings contiguous
    position = {old: new for new, old in enumerate(order)}
    return WordTree(
        tuple(names[i] for i in order), tuple(position[parents[i]] if parents[i] >= 0 else -1 for i in order)
    )
