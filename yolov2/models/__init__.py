"""The networks. Two ways in, which agree layer for layer (tested):

``build_model(name, num_classes, ...)`` -- a named constructor from :data:`MODELS`::

    yolov2_voc, yolov2_coco            Darknet-19 + passthrough head (yolov2-voc.cfg / yolov2.cfg)
    yolov2_tiny_voc, yolov2_tiny_coco  tiny YOLOv2 (yolov2-tiny-voc.cfg: head 1024 / yolov2-tiny.cfg: head 512)
    yolov2_resnet18/34/50/101          torchvision ResNet (random init) + the same passthrough head

``build_from_darknet_cfg(path)`` -- a Darknet ``.cfg`` file, run layer by layer.

``build_classifier(name, num_classes)`` -- the pretrain classifier: detector ``name``'s backbone + Darknet's
1x1-conv/avgpool head (``darknet19.cfg`` for the yolov2_* models), handed over to the detector by
:mod:`yolov2.models.classifier`; it maps x to logits Tensor[B, num_classes].

Every model maps x (Tensor[B, 3, H, W]), H and W divisible by 32, to raw predictions
Tensor[B, A*(5+C), H/32, W/32], anchor-major as Darknet (per anchor: tx, ty, tw, th, objectness
logit, C class logits), and has ``num_classes``, ``num_anchors``, ``stride`` (32),
``default_anchors`` (Darknet's anchors for that variant, grid units at stride 32, or None) and
``darknet_layers()`` (its (conv, bn or None) pairs in Darknet cfg order, for
:mod:`yolov2.models.darknet_io`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from torch import nn

from yolov2.errors import ConfigError
from yolov2.models.classifier import (
    BackboneClassifier,
    build_classifier,
    load_backbone_state,
    save_backbone_state,
    save_backbone_weights,
)
from yolov2.models.darknet19 import Darknet19
from yolov2.models.darknet_cfg import DarknetNet, build_from_cfg
from yolov2.models.darknet_io import LoadReport, load_darknet_weights, save_darknet_weights
from yolov2.models.layers import BatchNormFormula, ReorgMode, check_batch_norm_formula, set_batch_norm_formula
from yolov2.models.priors import COCO_ANCHORS, VOC_ANCHORS
from yolov2.models.resnet import ResNetBackbone
from yolov2.models.summary import model_summary
from yolov2.models.tiny import TINY_VOC_ANCHORS, TinyYOLOv2
from yolov2.models.yolov2 import YOLOv2

__all__ = [
    "MODELS",
    "build_model",
    "build_from_darknet_cfg",
    "build_classifier",
    "BackboneClassifier",
    "save_backbone_weights",
    "save_backbone_state",
    "load_backbone_state",
    "load_darknet_weights",
    "save_darknet_weights",
    "LoadReport",
    "model_summary",
    "YOLOv2",
    "TinyYOLOv2",
    "DarknetNet",
]


def _yolov2(
    num_classes: int,
    num_anchors: int = 5,
    width_multiplier: float = 1.0,
    reorg: ReorgMode = "darknet",
    sppf: bool = False,
    decoupled_head: bool = False,
    *,
    anchors: list[tuple[float, float]] | None,
) -> YOLOv2:
    backbone = Darknet19(width_multiplier=width_multiplier)
    return YOLOv2(
        backbone,
        num_classes,
        num_anchors,
        width_multiplier,
        reorg,
        sppf,
        decoupled_head,
        anchors,
    )


def _tiny(
    num_classes: int,
    num_anchors: int = 5,
    width_multiplier: float = 1.0,
    reorg: ReorgMode = "darknet",
    sppf: bool = False,
    decoupled_head: bool = False,
    *,
    head_channels: int,
    anchors: list[tuple[float, float]] | None,
) -> TinyYOLOv2:
    del reorg  # tiny YOLOv2 has no passthrough
    return TinyYOLOv2(num_classes, num_anchors, head_channels, width_multiplier, sppf, decoupled_head, anchors)


def _resnet(
    num_classes: int,
    num_anchors: int = 5,
    width_multiplier: float = 1.0,
    reorg: ReorgMode = "darknet",
    sppf: bool = False,
    decoupled_head: bool = False,
    *,
    depth: int,
) -> YOLOv2:
    if width_multiplier != 1.0:
        raise ConfigError(
            f"model.width_multiplier={width_multiplier}: ResNet backbones keep torchvision's widths; "
            "use a yolov2_* or yolov2_tiny_* model to narrow the network"
        )
    backbone = ResNetBackbone(depth)
    return YOLOv2(backbone, num_classes, num_anchors, 1.0, reorg, sppf, decoupled_head, None)


# name -> constructor(num_classes, num_anchors=5, width_multiplier=1.0, reorg="darknet", sppf=False,
#                     decoupled_head=False); build_model checks the arguments, so prefer it.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "yolov2_voc": partial(_yolov2, anchors=VOC_ANCHORS),
    "yolov2_coco": partial(_yolov2, anchors=COCO_ANCHORS),
    "yolov2_tiny_voc": partial(_tiny, head_channels=1024, anchors=TINY_VOC_ANCHORS),
    "yolov2_tiny_coco": partial(_tiny, head_channels=512, anchors=COCO_ANCHORS),
    "yolov2_resnet18": partial(_resnet, depth=18),
    "yolov2_resnet34": partial(_resnet, depth=34),
    "yolov2_resnet50": partial(_resnet, depth=50),
    "yolov2_resnet101": partial(_resnet, depth=101),
}


def build_model(
    name: str,
    num_classes: int,
    num_anchors: int = 5,
    width_multiplier: float = 1.0,
    reorg: str = "darknet",
    sppf: bool = False,
    decoupled_head: bool = False,
    batch_norm: BatchNormFormula = "darknet",
) -> nn.Module:
    """Build the named model (see :data:`MODELS`), randomly initialised.

    ``width_multiplier`` narrows every Darknet layer's channels (multiples of 8; not the prediction
    conv); ``reorg`` is ``"darknet"`` (needed for Darknet weights) or ``"pixel_unshuffle"``; ``sppf``
    adds an SPPF neck on the stride-32 map; ``decoupled_head`` splits the prediction into box/objectness
    and class towers (same output layout). The last two are off in Darknet's models. ``batch_norm`` is the
    inference formula of the Darknet batch norms (:class:`~yolov2.models.layers.DarknetBatchNorm2d`):
    ``"darknet"`` (pjreddie's, which its published weights need) or ``"alexeyab"``.
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model name {name!r}; choose one of {', '.join(MODELS)}")
    if num_classes < 1 or num_anchors < 1:
        raise ConfigError(f"model {name}: num_classes and num_anchors must be >= 1, got {num_classes}, {num_anchors}")
    if reorg not in ("darknet", "pixel_unshuffle"):
        raise ConfigError(f"model.reorg must be 'darknet' or 'pixel_unshuffle', got {reorg!r}")
    if width_multiplier <= 0:
        raise ConfigError(f"model.width_multiplier must be > 0, got {width_multiplier}")
    _check_batch_norm(batch_norm)
    model = MODELS[name](num_classes, num_anchors, width_multiplier, reorg, sppf, decoupled_head)
    return set_batch_norm_formula(model, batch_norm)


def build_from_darknet_cfg(path: str | Path, batch_norm: BatchNormFormula = "darknet") -> DarknetNet:
    """Build the network a Darknet ``.cfg`` describes; its ``region`` attribute holds the ``[region]``
    options (LossConfig fields thresh/object_scale/noobject_scale/class_scale/coord_scale/rescore,
    plus anchors, classes, num). Raises ConfigError naming the line for unsupported content.
    ``batch_norm`` as in :func:`build_model` (a cfg does not say which Darknet it was trained with)."""
    _check_batch_norm(batch_norm)
    return set_batch_norm_formula(build_from_cfg(path), batch_norm)  # type: ignore[return-value]


def _check_batch_norm(formula: str) -> None:
    """:func:`~yolov2.models.layers.check_batch_norm_formula`, as the ConfigError a model setting raises."""
    try:
        check_batch_norm_formula(formula)
    except ValueError as e:
        raise ConfigError(f"model.batch_norm: {e}") from None
