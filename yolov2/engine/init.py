"""A model's starting point before training: initial weights, and the Darknet layers that stay frozen.

``init_weights`` is a Darknet ``.weights`` file (e.g. ``darknet19_448.conv.23``: the first ``layers`` conv
layers) or one of our model files (``model.pt``; the tensors whose names and shapes fit are taken).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Protocol

from torch import nn

from yolov2.inference import load_model_file
from yolov2.models import load_darknet_weights
from yolov2.models.layers import ConvPair

log = logging.getLogger(__name__)


class DarknetLayers(Protocol):
    """A model whose layers map to a Darknet .weights file, in cfg order (every model of :mod:`yolov2.models`)."""

    def darknet_layers(self) -> Iterator[ConvPair]: ...


def load_initial_weights(model: nn.Module, path: str, layers: int | None = None) -> None:
    """Fill ``model`` from ``path``: a Darknet ``.weights`` file (its first ``layers`` conv layers; None: all)
    or a model file (non-strict: missing and unexpected tensors are counted in the log, not an error)."""
    if path.endswith(".weights"):
        report = load_darknet_weights(model, path, max_layers=layers)
        log.info("initialised from Darknet weights %s: %s", path, report)
    else:
        source, _ = load_model_file(path)
        missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
        log.info("initialised from %s (missing %d, unexpected %d)", path, len(missing), len(unexpected))


def freeze_darknet_layers(model: DarknetLayers, num_layers: int) -> None:
    """Freeze the first ``num_layers`` Darknet conv layers (``model.darknet_layers()`` order) and their batch
    norms: their parameters stop requiring gradients. ``num_layers <= 0``: nothing is frozen."""
    if num_layers <= 0:
        return
    for index, (conv, bn) in enumerate(model.darknet_layers()):
        if index >= num_layers:
            break
        for module in (conv, bn):
            if module is not None:
                for p in module.parameters():
                    p.requires_grad_(False)
