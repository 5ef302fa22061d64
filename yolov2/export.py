"""Exporting a trained model: ONNX (for ONNX Runtime and friends) and Darknet (``.weights`` + ``.cfg``).

ONNX: the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``), which needs no
extra package beyond ``torch`` and handles the reorg (a reshape/permute) and every layer here; the
torch.export-based one would add ``onnxscript``. The graph takes ``images`` (Tensor[B, 3, H, W],
float32 RGB in [0, 1], H and W divisible by 32) and gives either the raw head ``output``
(Tensor[B, A*(5+C), H/32, W/32], anchor-major) or, with the decode head, ``boxes`` (Tensor[B, N, 4]
xyxy normalised to the network input), ``objectness`` (Tensor[B, N]) and ``class_probs``
(Tensor[B, N, C]), N = A*(H/32)*(W/32), exactly :func:`yolov2.postprocess.decode`; for a YOLO9000 model
(``tree``) ``class_probs`` are each tree node's absolute probability, its group softmaxes in the graph. Batch,
height and width are dynamic axes, so one file serves every batch size and input size. Feed it what the
project's own inference does: :func:`yolov2.preprocess.images_to_tensor` (Darknet's letterbox), and map the
decoded boxes back with :func:`yolov2.postprocess.to_image_pixels` (or run :func:`~yolov2.postprocess.postprocess`
on the raw output).

Darknet: :func:`export_darknet` writes the ``.weights`` file (:func:`save_darknet_weights`), the
matching ``.cfg`` (:func:`yolov2.models.darknet_cfg_writer.darknet_cfg_text`, checked by building
a network from it and comparing its layers to the model's) and a ``.names`` file.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch
from torch import nn

from yolov2.errors import ConfigError, WeightsError
from yolov2.hierarchy import TreeTensors
from yolov2.io import atomic_output, write_names
from yolov2.models import build_from_darknet_cfg, save_darknet_weights
from yolov2.models.darknet_cfg_writer import darknet_cfg_text
from yolov2.models.darknet_io import conv_layer_shapes
from yolov2.models.heads import DecoupledHead
from yolov2.models.layers import SPPF, Reorg
from yolov2.postprocess import decode
from yolov2.wordtree import WordTree

MIN_OPSET = 17
RAW_OUTPUTS = ("output",)
DECODED_OUTPUTS = ("boxes", "objectness", "class_probs")


class DecodedModel(nn.Module):
    """The model followed by :func:`yolov2.postprocess.decode`, as one traceable module.

    x (Tensor[B, 3, H, W]) -> (boxes (Tensor[B, N, 4]) xyxy normalised to the input, objectness
    (Tensor[B, N]), class_probs (Tensor[B, N, C])); N = A*(H/32)*(W/32) in (anchor, row, column) order.
    ``anchors`` (A, 2) in grid cells at stride 32 are a buffer, so they travel with the weights.
    """

    anchors: torch.Tensor  # the registered buffer (declared for the type checker)

    def __init__(
        self, model: nn.Module, anchors: torch.Tensor, num_classes: int, stride: int = 32, tree: WordTree | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.num_classes = num_classes
        self.stride = stride
        self.tree = TreeTensors.from_tree(tree) if tree is not None else None
        self.register_buffer("anchors", torch.as_tensor(anchors, dtype=torch.float32).reshape(-1, 2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        output = self.model(x)
        # The grid is the input size / stride by contract. Restating it from the input's shape (a no-op
        # view in eager mode) keeps the ONNX exporter from freezing the traced example's grid into the
        # decode: its shape inference takes the size after the Darknet reorg's reshapes as static.
        batch, _, height, width = x.shape
        channels = self.anchors.shape[0] * (5 + self.num_classes)
        output = output.reshape(batch, channels, height // self.stride, width // self.stride)
        return decode(output, self.anchors, self.num_classes, self.tree)


def _dynamic_axes(output_names: Sequence[str]) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {"images": {0: "batch", 2: "height", 3: "width"}}
    for name in output_names:
        axes[name] = {0: "batch", 1: "boxes"} if name in DECODED_OUTPUTS else {0: "batch", 2: "grid_h", 3: "grid_w"}
    return axes


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: int | tuple[int, int] = 416,
    opset: int = MIN_OPSET,
    dynamic: bool = True,
    with_decode: bool = False,
    anchors: Sequence[Sequence[float]] | torch.Tensor | None = None,
    num_classes: int | None = None,
    tree: WordTree | None = None,
) -> Path:
    """Write ``model`` as an ONNX file at ``path`` (atomically) and return the path.

    ``input_size`` (side, or (height, width), divisible by 32) is the example input traced, and the
    fixed size when ``dynamic=False``. ``with_decode`` appends the decode head; its ``anchors``
    (A, 2) grid cells and ``num_classes`` default to the model's ``default_anchors`` and
    ``num_classes``; ``tree`` (YOLO9000) gives the decode head its group softmaxes. The model is traced in
    eval mode (batch norm uses its running statistics) on its own device; its training mode is restored afterwards.
    """
    if opset < MIN_OPSET:
        raise ConfigError(f"export_onnx: opset {opset} is too old; use {MIN_OPSET} or newer")
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    stride = getattr(model, "stride", 32)
    stride = stride if isinstance(stride, int) else 32  # (an nn.Conv2d's stride is a tuple, not the model's)
    if h % stride or w % stride or h <= 0 or w <= 0:
        raise ConfigError(f"export_onnx: input size {h}x{w} must be positive and divisible by {stride}")
    module: nn.Module = model
    output_names: Sequence[str] = RAW_OUTPUTS
    if with_decode:
        anchors = anchors if anchors is not None else getattr(model, "default_anchors", None)
        num_classes = num_classes if num_classes is not None else getattr(model, "num_classes", None)
        if anchors is None or num_classes is None:
            raise ConfigError("export_onnx: the decode head needs anchors and num_classes (the model has no defaults)")
        module = DecodedModel(model, torch.as_tensor(anchors, dtype=torch.float32), int(num_classes), stride, tree)
        output_names = DECODED_OUTPUTS
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    example = torch.zeros(1, 3, h, w, device=device)
    path = Path(path)
    was_training = model.training
    module.to(device).eval()
    try:
        with atomic_output(path) as tmp, warnings.catch_warnings():
            # The tracer notes Python-level shape checks (e.g. the maxpool's "divisible by 2" branch);
            # those are constant for every input divisible by 32, which the dynamic axes promise.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is marked legacy
            # F.pad's reversed pad list (tiny YOLOv2's 2x2/1 maxpool) is a Slice with step -1, left for ORT to fold.
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
            torch.onnx.export(
                module,
                (example,),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=["images"],
                output_names=list(output_names),
                dynamic_axes=_dynamic_axes(output_names) if dynamic else None,
                do_constant_folding=True,
            )
    finally:
        model.train(was_training)
    return path


def _check_darknet_expressible(model: nn.Module, name: str) -> None:
    """Refuse layers Darknet has no equivalent for (a cfg without them would load but compute something else)."""
    for module in model.modules():
        if isinstance(module, SPPF):
            raise ConfigError(f"model {name} has an SPPF neck, which Darknet's YOLOv2 cfgs cannot express")
        if isinstance(module, DecoupledHead):
            raise ConfigError(f"model {name} has a decoupled head, which Darknet's YOLOv2 cfgs cannot express")
        if isinstance(module, Reorg) and module.mode != "darknet":
            raise ConfigError(
                f"model {name} uses reorg={module.mode!r}; Darknet's [reorg] has its own channel order "
                "(only reorg='darknet' models export to Darknet)"
            )


def export_darknet(
    model: nn.Module,
    weights_path: str | Path,
    *,
    name: str,
    anchors: Sequence[Sequence[float]],
    width_multiplier: float = 1.0,
    input_size: int = 416,
    class_names: Sequence[str] = (),
    seen: int = 0,
) -> list[Path]:
    """Write ``weights_path`` (Darknet ``.weights``), the ``.cfg`` next to it (same stem) and, when
    ``class_names`` are given, a ``.names`` file; return the paths written.

    ``name`` is the model's name in :data:`yolov2.models.MODELS` (one of the Darknet-expressible ones:
    yolov2_voc, yolov2_coco, yolov2_tiny_voc, yolov2_tiny_coco), ``anchors`` (A, 2) grid cells at
    stride 32, ``seen`` the images-seen count for the header. Before anything is written the cfg is
    parsed back and its conv layers must have the model's shapes, so the pair always loads in Darknet.
    """
    weights_path = Path(weights_path)
    _check_darknet_expressible(model, name)
    num_classes = int(cast(int, model.num_classes))  # an int attribute (nn.Module types it a tensor or module)
    if class_names and len(class_names) != num_classes:
        raise ConfigError(f"export_darknet: {len(class_names)} class names for a model with {num_classes} classes")
    text = darknet_cfg_text(name, num_classes, [tuple(a) for a in anchors], width_multiplier, input_size)
    cfg_path = weights_path.with_suffix(".cfg")
    with atomic_output(cfg_path, suffix=".cfg") as tmp:
        tmp.write_text(text, encoding="utf-8")
        expected, actual = conv_layer_shapes(model), conv_layer_shapes(build_from_darknet_cfg(str(tmp)))
        if expected != actual:
            raise WeightsError(
                f"{cfg_path}: the cfg rendered for {name} (width {width_multiplier}) does not match the model's "
                f"conv layers ({len(actual)} vs {len(expected)} layers; first difference at layer "
                f"{next(i for i, (a, b) in enumerate(zip(actual + [None], expected + [None])) if a != b)})"
            )
        save_darknet_weights(model, weights_path, seen=seen)
    written = [weights_path, cfg_path]
    if class_names:
        names_path = weights_path.with_suffix(".names")
        write_names(class_names, names_path)
        written.append(names_path)
    return written
