"""The pretrain classifier: a detector's own backbone + Darknet's classification head, and its hand-over.

YOLOv2's recipe pretrains Darknet-19 on ImageNet at 224 (``darknet19.cfg``), fine-tunes it at 448
(``darknet19_448.cfg``), then starts the detector from its first 18 conv layers (``darknet19_448.conv.23``).
:class:`BackboneClassifier` is that network for every detector family of :data:`yolov2.models.MODELS`:
the backbone is built by the same class as the detector's (:data:`BACKBONES`), so its weights pass to the
detector either as a Darknet partial weights file (:func:`save_backbone_weights`, loaded with
``load_darknet_weights(detector, path, max_layers=classifier.num_backbone_layers)``) or as a plain state dict
(:func:`save_backbone_state` / :func:`load_backbone_state`: ``detector.backbone.load_state_dict``, strict).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import cast

import torch
from torch import nn

from yolov2.errors import ConfigError, WeightsError
from yolov2.io import atomic_output
from yolov2.models.darknet19 import Darknet19
from yolov2.models.darknet_io import save_darknet_weights
from yolov2.models.layers import (
    BatchNormFormula,
    ConvPair,
    DarknetConv,
    chain_darknet_layers,
    check_batch_norm_formula,
    set_batch_norm_formula,
)
from yolov2.models.resnet import ResNetBackbone
from yolov2.models.tiny import TinyBackbone


class BackboneClassifier(nn.Module):
    """Backbone, then Darknet's classifier head: conv 1x1 to ``num_classes`` (bias, no batch norm, linear),
    global average pool. For Darknet-19 this is ``darknet19.cfg`` layer for layer, without its ``[softmax]``:
    the output is logits, softmaxed by the loss (cross-entropy) or by :meth:`predict_proba`.

    ``backbone(x)`` returns its stride-32 map, or a tuple whose last element is that map (Darknet-19 and the
    ResNets also return the stride-16 passthrough source); it exposes ``out_channels`` and ``darknet_layers()``.
    x (Tensor[B, 3, H, W]), H and W divisible by 32 (224 and 448 in Darknet's recipe) -> Tensor[B, num_classes].
    """

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = backbone
        # plain int on every backbone (nn.Module types unknown attributes as Tensor | Module)
        self.head = DarknetConv(
            cast(int, backbone.out_channels), num_classes, 1, batch_normalize=False, activation="linear"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        last = features[-1] if isinstance(features, tuple) else features
        return self.head(last).mean(dim=(2, 3))  # conv then [avgpool], in Darknet's order

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (Darknet's ``[softmax]``): x (Tensor[B, 3, H, W]) -> Tensor[B, num_classes]."""
        return torch.softmax(self(x), dim=1)

    def darknet_layers(self) -> Iterator[ConvPair]:
        """(conv, bn or None) in Darknet cfg order: the backbone's convs, then the 1x1 head conv."""
        yield from chain_darknet_layers(self.backbone, self.head)

    @property
    def num_backbone_layers(self) -> int:
        """Darknet conv layers in the backbone (18 for Darknet-19): the ``max_layers`` of the hand-over."""
        return sum(1 for _ in chain_darknet_layers(self.backbone))


def _darknet19(width_multiplier: float) -> nn.Module:
    return Darknet19(width_multiplier=width_multiplier)


def _tiny(width_multiplier: float) -> nn.Module:
    return TinyBackbone(width_multiplier=width_multiplier)


def _resnet(width_multiplier: float, *, depth: int) -> nn.Module:
    if width_multiplier != 1.0:
        raise ConfigError(
            f"width_multiplier={width_multiplier}: ResNet backbones keep torchvision's widths; "
            "use a yolov2_* or yolov2_tiny_* model to narrow the network"
        )
    return ResNetBackbone(depth)


# detector name (yolov2.models.MODELS) -> constructor(width_multiplier) of that detector's backbone class,
# built with the detector's arguments so the state dicts fit (tested against build_model for every name).
BACKBONES: dict[str, Callable[[float], nn.Module]] = {
    "yolov2_voc": _darknet19,
    "yolov2_coco": _darknet19,
    "yolov2_tiny_voc": _tiny,
    "yolov2_tiny_coco": _tiny,
    "yolov2_resnet18": partial(_resnet, depth=18),
    "yolov2_resnet34": partial(_resnet, depth=34),
    "yolov2_resnet50": partial(_resnet, depth=50),
    "yolov2_resnet101": partial(_resnet, depth=101),
}


def build_classifier(
    detector_name: str, num_classes: int, width_multiplier: float = 1.0, batch_norm: BatchNormFormula = "darknet"
) -> BackboneClassifier:
    """The classifier whose backbone is the backbone of detector ``detector_name`` (a key of
    :data:`yolov2.models.MODELS`, e.g. ``"yolov2_voc"`` -> Darknet-19), randomly initialised.

    ``width_multiplier`` and ``batch_norm`` as in :func:`yolov2.models.build_model`; give the detector the
    same width, or its backbone will not fit the weights.
    """
    if detector_name not in BACKBONES:
        raise ConfigError(f"unknown detector name {detector_name!r}; choose one of {', '.join(BACKBONES)}")
    if num_classes < 1:
        raise ConfigError(f"classifier for {detector_name}: num_classes must be >= 1, got {num_classes}")
    if width_multiplier <= 0:
        raise ConfigError(f"width_multiplier must be > 0, got {width_multiplier}")
    try:
        formula = check_batch_norm_formula(batch_norm)
    except ValueError as e:
        raise ConfigError(f"batch_norm: {e}") from None
    model = BackboneClassifier(BACKBONES[detector_name](width_multiplier), num_classes)
    return cast(BackboneClassifier, set_batch_norm_formula(model, formula))


def save_backbone_weights(classifier: BackboneClassifier, path: str | Path, seen: int = 0) -> int:
    """Write the backbone as a Darknet partial weights file: the 20-byte header, then the backbone's conv
    layers (:func:`~yolov2.models.darknet_io.save_darknet_weights` with ``max_layers=num_backbone_layers``).
    Returns the bytes written.

    For Darknet-19 this is what ``darknet19_448.conv.23`` holds (its first 18 conv layers), readable by
    Darknet's loader. ``seen=0`` as Darknet's ``partial`` command writes it: a non-zero count would move
    Darknet's learning-rate schedule (burn-in, steps) forward when detector training starts from the file.
    The tiny backbone's file holds its 7 body convs (``yolov2-tiny*.cfg`` layers 0..12). A ResNet's file
    follows ``ResNetBackbone.darknet_layers()`` (conv/bn pairs, downsample convs included): our loader reads
    it into a ResNet detector, but no Darknet cfg builds torchvision's ResNet (Darknet's ``[shortcut]`` has no
    projection conv), so Darknet itself has no network to read it into.
    """
    return save_darknet_weights(classifier, path, seen, max_layers=classifier.num_backbone_layers)


def save_backbone_state(classifier: BackboneClassifier, path: str | Path) -> None:
    """Write the backbone's state dict ({name: tensor}, CPU) with ``torch.save``, atomically: the hand-over
    for every backbone, and readable with ``torch.load(path, weights_only=True)``."""
    state = {k: v.detach().cpu().clone() for k, v in classifier.backbone.state_dict().items()}
    with atomic_output(path) as tmp:
        torch.save(state, tmp)


def load_backbone_state(detector: nn.Module, path: str | Path) -> None:
    """Fill ``detector.backbone`` from a file of :func:`save_backbone_state`: a strict load (every name and
    shape must fit), the rest of the detector untouched. On a mismatch WeightsError names the file and the
    tensors, and nothing is modified."""
    backbone = getattr(detector, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise WeightsError(f"{path}: {type(detector).__name__} has no backbone module to load it into")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch raises UnpicklingError (or RuntimeError) for unsafe or broken content
        raise WeightsError(f"{path}: not a backbone state dict (weights_only load refused it: {e})") from e
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a dict of tensors (save_backbone_state), got {type(state).__name__}")
    problems = state_dict_mismatch(backbone.state_dict(), state)
    if problems:
        raise WeightsError(
            f"{path}: backbone weights do not fit {type(backbone).__name__} ({problems}); build the detector "
            "with the classifier's detector family and width_multiplier"
        )
    backbone.load_state_dict(state, strict=True)


def state_dict_mismatch(expected: dict[str, torch.Tensor], given: dict[str, object]) -> str:
    """What keeps ``given`` from a strict load where ``expected`` is the module's state dict ('' if nothing)."""
    wrong = []
    for k, v in given.items():
        if k not in expected:
            continue
        if not isinstance(v, torch.Tensor):
            wrong.append(f"{k} is a {type(v).__name__}, not a tensor")
        elif v.shape != expected[k].shape:
            wrong.append(f"{k}: {tuple(v.shape)} in the file, {tuple(expected[k].shape)} in the model")
    parts = [
        ("missing", [k for k in expected if k not in given]),
        ("unexpected", [k for k in given if k not in expected]),
        ("wrong", wrong),
    ]
    return "; ".join(f"{what}: {_first(items)}" for what, items in parts if items)


def _first(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")
