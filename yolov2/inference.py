"""A trained detector on disk, and batched prediction on images: what `evaluate`, `yolov2 predict` and
the tests share, so every path runs exactly the same pre- and post-processing.

The model file (``model.pt``) is a plain dict loadable with ``torch.load(weights_only=True)``:
``{"format": "yolov2-pipeline/model", "version": 1, "spec": ModelSpec as dict, "state_dict": ...}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from yolov2.config import PredictConfig
from yolov2.engine.checkpoint import load_checkpoint, save_checkpoint, unwrap
from yolov2.engine.precision import FLOAT32, Precision
from yolov2.errors import WeightsError
from yolov2.hierarchy import TreeTensors
from yolov2.models import build_model
from yolov2.models.layers import BatchNormFormula
from yolov2.postprocess import Detections, postprocess
from yolov2.preprocess import images_to_tensor
from yolov2.wordtree import WordTree, ancestors_at_depth

MODEL_FORMAT = "yolov2-pipeline/model"


@dataclass
class ModelSpec:
    """Everything needed to rebuild a trained model and interpret its output."""

    name: str
    num_classes: int
    anchors: list[list[float]]  # (A, 2) in grid cells at stride 32
    class_names: list[str] = field(default_factory=list)
    input_size: int = 416
    width_multiplier: float = 1.0
    reorg: str = "darknet"
    sppf: bool = False
    decoupled_head: bool = False
    batch_norm: BatchNormFormula = "darknet"  # the inference formula (yolov2.models.layers.DarknetBatchNorm2d)
    # YOLO9000: the WordTree of the class scores as {"names": [...], "parents": [...]} (num_classes = its nodes),
    # and the tree node of each of class_names (Darknet's map=); without tree_classes a box's label is the node
    # where the tree walk stops
    tree: dict[str, list] | None = None
    tree_classes: list[int] | None = None

    def word_tree(self) -> WordTree | None:
        return WordTree(tuple(self.tree["names"]), tuple(self.tree["parents"])) if self.tree else None

    def build(self) -> nn.Module:
        return build_model(
            self.name,
            self.num_classes,
            len(self.anchors),
            self.width_multiplier,
            self.reorg,
            self.sppf,
            self.decoupled_head,
            self.batch_norm,
        )


def save_model_file(path: str | Path, model: nn.Module, spec: ModelSpec) -> None:
    inner = unwrap(model)
    state = {k: v.detach().cpu() for k, v in inner.state_dict().items()}
    save_checkpoint(path, {"format": MODEL_FORMAT, "version": 1, "spec": dataclasses.asdict(spec), "state_dict": state})


def load_model_file(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelSpec]:
    """Rebuild the model in eval mode on ``device`` (weights_only load)."""
    blob = load_checkpoint(path)
    if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
        raise WeightsError(f"{path}: not a yolov2-pipeline model file (expected format {MODEL_FORMAT!r})")
    spec = ModelSpec(**blob["spec"])
    model = spec.build()
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as e:
        raise WeightsError(f"{path}: weights do not fit model {spec.name}: {e}") from e
    return model.to(device).eval(), spec


def _labels(spec: ModelSpec, tree: WordTree | None, p: PredictConfig) -> tuple[list[int] | None, list[str]]:
    """What a Predictor's labels index: the tree nodes it scores (None: the walk, or no tree), and their names."""
    if tree is None:
        return None, list(spec.class_names)
    if p.tree_walk:
        return None, list(tree.names)
    nodes = spec.tree_classes if spec.tree_classes is not None else list(range(tree.num_nodes))
    if p.tree_depth is not None:
        nodes, _ = ancestors_at_depth(tree, nodes, p.tree_depth)
    return list(nodes), [tree.names[n] for n in nodes]


class Predictor:
    """Batched inference: RGB images in, :class:`Detections` in original-image pixels out.

    Darknet's pipeline end to end by default: its letterbox with its float resize (``resize="darknet"``;
    ``"opencv"`` is the faster approximation, :mod:`yolov2.preprocess`), then decode, threshold, NMS on
    unclipped boxes and clipping (:func:`yolov2.postprocess.postprocess`). ``label_names[label]`` names a
    detection's label (for a YOLO9000 model: a class, its ancestor at ``tree_depth``, or a tree node).
    """

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        predict: PredictConfig | None = None,
        *,
        device: str | torch.device = "cpu",
        precision: Precision | None = None,
    ) -> None:
        """``predict``: None means :class:`PredictConfig`'s defaults at the model's own ``spec.input_size``."""
        self.predict = predict or PredictConfig(input_size=spec.input_size)
        self.precision = precision or FLOAT32
        self.model = model.to(device).eval()
        if self.precision.channels_last:  # never back to NCHW: the model may be one being trained
            self.model = self.model.to(memory_format=torch.channels_last)
        self.spec = spec
        self.device = torch.device(device)
        self.anchors = torch.tensor(spec.anchors, dtype=torch.float32, device=self.device)
        tree = spec.word_tree()
        self.tree = TreeTensors.from_tree(tree, self.device) if tree is not None else None
        self.tree_classes, self.label_names = _labels(spec, tree, self.predict)

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        predict: PredictConfig | None = None,
        *,
        device: str | torch.device = "cpu",
        precision: Precision | None = None,
    ) -> Predictor:
        model, spec = load_model_file(path, device)
        return cls(model, spec, predict, device=device, precision=precision)

    @torch.inference_mode()
    def __call__(self, images: Sequence[np.ndarray]) -> list[Detections]:
        if not images:
            return []
        p = self.predict
        batch = images_to_tensor(images, p.input_size, p.letterbox, p.resize).to(self.device)
        with self.precision.autocast(self.device):
            output = self.model(batch.contiguous(memory_format=self.precision.memory_format)).float()
        sizes = torch.tensor([[im.shape[1], im.shape[0]] for im in images], device=self.device)
        return postprocess(
            output,
            self.anchors,
            self.spec.num_classes,
            (p.input_size, p.input_size),
            sizes,
            letterbox=p.letterbox,
            conf_thresh=p.conf_thresh,
            nms_thresh=p.nms_thresh,
            max_det=p.max_det,
            max_candidates=p.max_candidates,
            tree=self.tree,
            tree_classes=self.tree_classes,
            hier_thresh=p.hier_thresh,
        )
