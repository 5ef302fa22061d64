"""What every train worker gets: the model spec a config describes, here with a YOLO9000 tree (no Ray)."""

from __future__ import annotations

import pytest

from pipelines.config import load_config
from pipelines.train.job import model_spec
from yolov2.errors import DatasetError
from yolov2.wordtree import WordTree, write_tree

TREE = WordTree(("animal", "vehicle", "dog", "cat", "car"), (-1, -1, 0, 0, 1))
ANCHORS = [[1.0, 2.0]]


def test_a_tree_model_predicts_the_tree_and_maps_each_class_to_its_node(tmp_path):
    write_tree(TREE, tmp_path / "small.tree")
    cfg = load_config(None, [f"model.tree={tmp_path / 'small.tree'}"])
    spec = model_spec(cfg, ["cat", "car", "animal"], ANCHORS)
    assert spec.num_classes == 5 and spec.word_tree() == TREE
    assert spec.tree_classes == [3, 4, 0] and spec.class_names == ["cat", "car", "animal"]
    assert model_spec(load_config(None, []), ["cat", "car"], ANCHORS).tree is None
    with pytest.raises(DatasetError, match="horse"):
        model_spec(cfg, ["cat", "horse"], ANCHORS)
