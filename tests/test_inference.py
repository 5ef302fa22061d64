"""The model file and the Predictor with a YOLO9000 tree: the tree travels in the spec, and prediction labels
boxes by the tree walk or against the spec's class nodes."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from test_hierarchy import HAND
from yolov2.config import PredictConfig
from yolov2.inference import ModelSpec, Predictor, load_model_file, save_model_file
from yolov2.postprocess import postprocess
from yolov2.preprocess import images_to_tensor

ANCHORS = [[1.0, 1.5], [3.0, 2.0]]


def _tree_spec(tree_classes: list[int] | None) -> ModelSpec:
    return ModelSpec(
        name="yolov2_tiny_voc",
        num_classes=HAND.num_nodes,
        anchors=ANCHORS,
        input_size=64,
        width_multiplier=0.125,
        tree={"names": list(HAND.names), "parents": list(HAND.parents)},
        tree_classes=tree_classes,
    )


def test_the_tree_travels_in_the_model_file(tmp_path):
    spec = _tree_spec(list(HAND.leaves))
    torch.manual_seed(0)
    save_model_file(tmp_path / "model.pt", spec.build(), spec)
    _, loaded = load_model_file(tmp_path / "model.pt")
    assert loaded == spec and loaded.word_tree() == HAND
    assert dataclasses.replace(spec, tree=None).word_tree() is None


def test_the_predictor_labels_by_the_walk_or_by_the_class_nodes():
    torch.manual_seed(0)
    images = [np.random.default_rng(i).integers(0, 255, (48 + 8 * i, 64, 3), dtype=np.uint8) for i in range(2)]
    for tree_classes in (None, list(HAND.leaves)):
        spec = _tree_spec(list(HAND.leaves))
        model = spec.build().eval()
        predict = PredictConfig(input_size=64, conf_thresh=0.0, hier_thresh=0.3, tree_walk=tree_classes is None)
        predictor = Predictor(model, spec, predict)
        detections = predictor(images)
        expected_names = HAND.names if tree_classes is None else [HAND.names[n] for n in HAND.leaves]
        assert predictor.label_names == list(expected_names)
        with torch.no_grad():
            output = model(images_to_tensor(images, 64, True, "darknet"))
        expected = postprocess(
            output,
            torch.tensor(ANCHORS),
            HAND.num_nodes,
            (64, 64),
            torch.tensor([[64, 48], [64, 56]]),
            conf_thresh=0.0,
            tree=HAND,
            tree_classes=tree_classes,
            hier_thresh=0.3,
        )
        for got, want in zip(detections, expected):
            assert len(got.labels) > 0 and torch.equal(got.labels, want.labels)
            torch.testing.assert_close(got.scores, want.scores)
        labels = torch.cat([d.labels for d in detections])
        limit = HAND.num_nodes if tree_classes is None else len(tree_classes)
        assert int(labels.max()) < limit


def test_the_predictor_scores_at_a_depth_of_the_tree():
    """predict.tree_depth=0: the leaves' ancestors at the roots (animal, plant), scored objectness x P(root)."""
    torch.manual_seed(1)
    images = [np.random.default_rng(5).integers(0, 255, (64, 64, 3), dtype=np.uint8)]
    spec = _tree_spec(list(HAND.leaves))  # cat, oak, beagle, pug, toy_poodle
    model = spec.build().eval()
    (got,) = Predictor(model, spec, PredictConfig(input_size=64, conf_thresh=0.0, tree_depth=0))(images)
    with torch.no_grad():
        output = model(images_to_tensor(images, 64, True, "darknet"))
    (want,) = postprocess(
        output, torch.tensor(ANCHORS), HAND.num_nodes, (64, 64), torch.tensor([[64, 64]]), conf_thresh=0.0,
        tree=HAND, tree_classes=[0, 1],
    )  # fmt: skip
    assert set(got.labels.tolist()) == {0, 1} and torch.equal(got.labels, want.labels)
    torch.testing.assert_close(got.scores, want.scores)
