"""A trained detector on disk, and batched prediction on images: what `evaluate`, `yolov2 predict` and
the tests share, so every path runs exactly the same pre- and post-processing.

The model file (``model.pt``) is a plain dict loadable with ``torch.load(weights_only=True)``:
``{"format": "yolov2-pipeline/model", "version": 1, "spec": ModelSpec as dict, "state_dict": ...}``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from torch import nn

from yolov2.engine.checkpoint import load_checkpoint, save_checkpoint
from yolov2.engine.precision import FLOAT32, Precision
from yolov2.errors import WeightsError
from yolov2.models import build_model
from yolov2.postprocess import Detections, letterbox_params, postprocess

MODEL_FORMAT = "yolov2-pipeline/model"
LETTERBOX_FILL = 127  # Darknet pads letterboxed images with 0.5 gray


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

    def build(self) -> nn.Module:
        return build_model(self.name, self.num_classes, len(self.anchors), self.width_multiplier, self.reorg,
                           self.sppf, self.decoupled_head)


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


def letterbox_image(image: np.ndarray, input_w: int, input_h: int) -> np.ndarray:
    """image (uint8[H, W, 3]) -> uint8[input_h, input_w, 3]: resized keeping its aspect, centred on gray.

    The geometry is :func:`yolov2.postprocess.letterbox_params`, so boxes map back exactly.
    """
    h, w = image.shape[:2]
    p = letterbox_params(w, h, input_w, input_h)
    out = np.full((input_h, input_w, 3), LETTERBOX_FILL, np.uint8)
    out[p.pad_y : p.pad_y + p.new_h, p.pad_x : p.pad_x + p.new_w] = cv2.resize(
        image, (p.new_w, p.new_h), interpolation=cv2.INTER_LINEAR
    )
    return out


def images_to_tensor(images: Sequence[np.ndarray], input_size: int, letterbox: bool) -> torch.Tensor:
    """RGB uint8 images of any sizes -> float Tensor[B, 3, S, S] in [0, 1] (letterboxed or resized)."""
    prepared = [
        letterbox_image(im, input_size, input_size) if letterbox
        else cv2.resize(im, (input_size, input_size), interpolation=cv2.INTER_LINEAR)
        for im in images
    ]
    batch = torch.from_numpy(np.stack(prepared)).permute(0, 3, 1, 2)
    return batch.float().div_(255.0)


class Predictor:
    """Batched inference: RGB images in, :class:`Detections` in original-image pixels out."""

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        *,
        input_size: int | None = None,
        letterbox: bool = True,
        conf_thresh: float = 0.005,
        nms_thresh: float = 0.45,
        max_det: int = 100,
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
        self.letterbox = letterbox
        self.conf_thresh, self.nms_thresh, self.max_det = conf_thresh, nms_thresh, max_det
        self.max_candidates = max_candidates
        self.device = torch.device(device)
        self.anchors = torch.tensor(spec.anchors, dtype=torch.float32, device=self.device)

    @classmethod
    def from_file(cls, path: str | Path, device: str = "cpu", **kwargs) -> "Predictor":
        model, spec = load_model_file(path, device)
        return cls(model, spec, device=device, **kwargs)

    @torch.inference_mode()
    def __call__(self, images: Sequence[np.ndarray]) -> list[Detections]:
        if not images:
            return []
        batch = images_to_tensor(images, self.input_size, self.letterbox).to(self.device)
        with self.precision.autocast(self.device):
            output = self.model(batch.contiguous(memory_format=self.precision.memory_format)).float()
        sizes = torch.tensor([[im.shape[1], im.shape[0]] for im in images], device=self.device)
        return postprocess(
            output, self.anchors, self.spec.num_classes, (self.input_size, self.input_size), sizes,
            letterbox=self.letterbox, conf_thresh=self.conf_thresh, nms_thresh=self.nms_thresh, max_det=self.max_det,
            max_candidates=self.max_candidates,
        )
