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

from yolov2.engine.checkpoint import load_checkpoint, save_checkpoint
from yolov2.engine.precision import FLOAT32, Precision
from yolov2.errors import WeightsError
from yolov2.models import build_model
from yolov2.postprocess import Detections, postprocess
from yolov2.preprocess import Resize, images_to_tensor

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
    batch_norm: str = "darknet"  # the inference formula (yolov2.models.layers.DarknetBatchNorm2d)

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
        )  # type: ignore[arg-type]


def save_model_file(path: str | Path, model: nn.Module, spec: ModelSpec) -> None:
    inner = model.module if hasattr(model, "module") else model
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


class Predictor:
    """Batched inference: RGB images in, :class:`Detections` in original-image pixels out.

    Darknet's pipeline end to end by default: its letterbox with its float resize (``resize="darknet"``;
    ``"opencv"`` is the faster approximation, :mod:`yolov2.preprocess`), then decode, threshold, NMS on
    unclipped boxes and clipping (:func:`yolov2.postprocess.postprocess`).
    """

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        *,
        input_size: int | None = None,
        letterbox: bool = True,
        resize: Resize = "darknet",
        conf_thresh: float = 0.005,
        nms_thresh: float = 0.45,
        max_det: int | None = 100,
        max_candidates: int | None = None,
        device: str | torch.device = "cpu",
        precision: Precision | None = None,
    ) -> None:
        self.precision = precision or FLOAT32
        self.model = model.to(device).eval()
        if self.precision.channels_last:  # never back to NCHW: the model may be one being trained
            self.model = self.model.to(memory_format=torch.channels_last)
        self.spec = spec
        self.input_size = input_size or spec.input_size
        self.letterbox, self.resize = letterbox, resize
        self.conf_thresh, self.nms_thresh, self.max_det = conf_thresh, nms_thresh, max_det
        self.max_candidates = max_candidates
        self.device = torch.device(device)
        self.anchors = torch.tensor(spec.anchors, dtype=torch.float32, device=self.device)

    @classmethod
    def from_file(cls, path: str | Path, device: str = "cpu", **kwargs) -> Predictor:
        model, spec = load_model_file(path, device)
        return cls(model, spec, device=device, **kwargs)

    @torch.inference_mode()
    def __call__(self, images: Sequence[np.ndarray]) -> list[Detections]:
        if not images:
            return []
        batch = images_to_tensor(images, self.input_size, self.letterbox, self.resize).to(self.device)
        with self.precision.autocast(self.device):
            output = self.model(batch.contiguous(memory_format=self.precision.memory_format)).float()
        sizes = torch.tensor([[im.shape[1], im.shape[0]] for im in images], device=self.device)
        return postprocess(
            output,
            self.anchors,
            self.spec.num_classes,
            (self.input_size, self.input_size),
            sizes,
            letterbox=self.letterbox,
            conf_thresh=self.conf_thresh,
            nms_thresh=self.nms_thresh,
            max_det=self.max_det,
            max_candidates=self.max_candidates,
        )
