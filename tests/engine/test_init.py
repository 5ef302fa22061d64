"""A model's starting point: weights from a Darknet .weights file (all or the first N conv layers) or from a
model file, and the first N Darknet layers frozen. Pure torch, no Ray."""

from __future__ import annotations

import pytest
import torch

from yolov2.engine.init import freeze_darknet_layers, load_initial_weights
from yolov2.inference import ModelSpec, save_model_file
from yolov2.models import save_darknet_weights

SPEC = ModelSpec("yolov2_tiny_voc", 3, [[1.0, 1.0], [2.0, 2.0]], ["a", "b", "c"], 64, width_multiplier=0.25)


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = SPEC.build()
    with torch.no_grad():  # batch-norm statistics are not random at construction: make them differ too
        for buffer in model.buffers():
            if buffer.is_floating_point():
                buffer.copy_(torch.rand_like(buffer) + 0.5)
    return model


def _conv_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [conv.weight.detach().clone() for conv, _ in model.darknet_layers()]


@pytest.mark.parametrize("layers", [None, 2])
def test_darknet_weights_fill_all_or_the_first_n_conv_layers(tmp_path, layers):
    source, target = _model(1), _model(2)
    before = _conv_weights(target)
    path = tmp_path / "source.weights"
    save_darknet_weights(source, path)
    load_initial_weights(target, str(path), layers)
    loaded, wanted = _conv_weights(target), _conv_weights(source)
    count = len(wanted) if layers is None else layers
    assert count < len(wanted) or layers is None
    for index, (got, want, old) in enumerate(zip(loaded, wanted, before)):
        assert torch.equal(got, want if index < count else old), index
    if layers is not None:  # the untouched layers really differ from the source's
        assert not torch.equal(loaded[count], wanted[count])


def test_model_file_fills_every_tensor(tmp_path):
    source, target = _model(1), _model(2)
    save_model_file(tmp_path / "model.pt", source, SPEC)
    load_initial_weights(target, str(tmp_path / "model.pt"))
    got, want = target.state_dict(), source.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("num_layers", [0, 3])
def test_freeze_stops_gradients_of_the_first_n_darknet_layers_and_their_batch_norms(num_layers):
    model = _model(1)
    freeze_darknet_layers(model, num_layers)
    pairs = list(model.darknet_layers())
    for index, (conv, bn) in enumerate(pairs):
        params = list(conv.parameters()) + (list(bn.parameters()) if bn is not None else [])
        assert params and all(p.requires_grad == (index >= num_layers) for p in params), index
    frozen = {id(p) for conv, bn in pairs[:num_layers] for m in (conv, bn) if m is not None for p in m.parameters()}
    assert sum(not p.requires_grad for p in model.parameters()) == len(frozen)
