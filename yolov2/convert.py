"""Darknet ``.weights`` -> our model (a named model from :data:`yolov2.models.MODELS` plus its
:class:`~yolov2.inference.ModelSpec`), for ``yolov2 convert-weights``. The way back is
:func:`yolov2.export.export_darknet`.

Our model file rebuilds the network by name, so a Darknet cfg must be matched to a named model:
the candidates (:data:`DARKNET_MODELS`) are built with the cfg's classes and anchor count, the
one whose conv layers have the cfg's shapes is taken, both networks load the same ``.weights``,
and their outputs on a random input must agree (the shapes alone would not catch a different
layer order). Anchors and classes then come from the cfg's ``[region]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch
from torch import nn

from yolov2.errors import ConfigError, WeightsError
from yolov2.inference import ModelSpec
from yolov2.models import LoadReport, build_from_darknet_cfg, build_model, load_darknet_weights
from yolov2.models.darknet_cfg import DarknetNet
from yolov2.models.darknet_cfg_writer import DARKNET_MODELS
from yolov2.models.darknet_io import conv_layer_shapes
from yolov2.models.layers import BatchNormFormula
from yolov2.models.yolov2 import Anchors

CHECK_INPUT = 64  # side of the random image both networks run to confirm they compute the same function


def match_named_model(
    cfg_net: DarknetNet,
    width_multiplier: float = 1.0,
    names: Sequence[str] = DARKNET_MODELS,
    batch_norm: BatchNormFormula = "darknet",
) -> tuple[str, nn.Module]:
    """The named model (of ``names``) whose conv layers have ``cfg_net``'s shapes, built (randomly
    initialised) with the cfg's classes and anchor count. When several fit (yolov2_voc and yolov2_coco
    differ only in anchors), the one whose default anchors are the cfg's wins, else the first.
    Raises ConfigError if none fits."""
    # darknet_to_model checks that the cfg has a [region], which sets these
    assert cfg_net.num_classes is not None and cfg_net.num_anchors is not None
    target = conv_layer_shapes(cfg_net)
    fits = []
    for name in names:
        model = build_model(
            name, int(cfg_net.num_classes), int(cfg_net.num_anchors), width_multiplier, batch_norm=batch_norm
        )
        if conv_layer_shapes(model) == target:
            fits.append((name, model))
    if not fits:
        raise ConfigError(
            f"the cfg's {len(target)} conv layers match none of {', '.join(names)} at width multiplier "
            f"{width_multiplier:g}; pass --width-multiplier if the cfg is a narrowed model"
        )
    cfg_anchors = torch.tensor(cfg_net.default_anchors, dtype=torch.float64)
    for name, model in fits:
        defaults = cast("Anchors | None", model.default_anchors)  # nn.Module types attributes as Tensor | Module
        if (
            defaults is not None
            and len(defaults) == len(cfg_anchors)
            and torch.allclose(torch.tensor(defaults, dtype=torch.float64), cfg_anchors, rtol=0, atol=1e-6)
        ):
            return name, model
    return fits[0]


@torch.no_grad()
def _check_same_function(cfg_net: nn.Module, model: nn.Module, cfg_path: str, name: str) -> None:
    x = torch.rand(1, 3, CHECK_INPUT, CHECK_INPUT, generator=torch.Generator().manual_seed(0))
    a, b = cfg_net.eval()(x), model.eval()(x)
    if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-4, atol=1e-4):
        raise ConfigError(
            f"{cfg_path}: its conv shapes match {name}, but the networks compute different outputs "
            "(a different layer order?); it cannot be stored as a named model"
        )


def darknet_to_model(
    weights: str | Path,
    *,
    cfg: str | Path | None = None,
    name: str | None = None,
    num_classes: int | None = None,
    width_multiplier: float = 1.0,
    class_names: Sequence[str] = (),
    input_size: int | None = None,
    batch_norm: BatchNormFormula = "darknet",
) -> tuple[nn.Module, ModelSpec, LoadReport]:
    """Load a Darknet ``.weights`` file into a named model; returns (model in eval mode, spec, load report).

    With ``cfg``: the network, anchors (grid cells at stride 32), classes and [net] input size come
    from the cfg; ``name`` (optional) restricts the match. Without: ``name`` and ``num_classes`` are
    required and the anchors are the named model's defaults. The file size must match exactly.
    ``class_names`` (optional) must have one name per class. ``batch_norm``: the Darknet the weights were
    trained with, ``"darknet"`` (pjreddie's, its published weights) or ``"alexeyab"`` (AlexeyAB's fork).
    """
    if cfg is not None:
        cfg_net = build_from_darknet_cfg(cfg, batch_norm)
        if cfg_net.region is None:
            raise ConfigError(f"{cfg}: no [region] section; the anchors and classes come from it")
        if name is not None and name not in DARKNET_MODELS:
            raise ConfigError(f"model {name!r} has no Darknet cfg; choose one of {', '.join(DARKNET_MODELS)}")
        name, model = match_named_model(cfg_net, width_multiplier, [name] if name else DARKNET_MODELS, batch_norm)
        load_darknet_weights(cfg_net, weights)
        report = load_darknet_weights(model, weights)
        _check_same_function(cfg_net, model, str(cfg), name)
        anchors = [list(a) for a in cfg_net.region["anchors"]]
        num_classes = int(cfg_net.region["classes"])
        h, w = cfg_net.input_size
        if input_size is None:
            input_size = h if h == w and h > 0 and h % 32 == 0 else 416
    else:
        if name is None or num_classes is None:
            raise ConfigError("convert Darknet weights: give --cfg, or --model and --num-classes")
        model = build_model(name, num_classes, width_multiplier=width_multiplier, batch_norm=batch_norm)
        if getattr(model, "default_anchors", None) is None:
            raise ConfigError(f"model {name} has no default anchors; convert with --cfg to take them from [region]")
        report = load_darknet_weights(model, weights)
        anchors = [list(a) for a in cast(Anchors, model.default_anchors)]
    if class_names and len(class_names) != num_classes:
        raise ConfigError(f"{len(class_names)} class names for {num_classes} classes")
    if report.layers_loaded != report.layers_total:
        raise WeightsError(f"{weights}: only {report.layers_loaded}/{report.layers_total} conv layers loaded")
    spec = ModelSpec(
        name=name,
        num_classes=num_classes,
        anchors=anchors,
        class_names=list(class_names),
        input_size=input_size or 416,
        width_multiplier=width_multiplier,
        batch_norm=batch_norm,
    )
    return model.eval(), spec, report
