"""build_sgd's (fused) step against SGD with momentum written out, decay on conv weights only; the poly learning
rate schedule against Darknet's get_current_rate written out."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from yolov2.engine.optim import build_sgd, darknet_poly_lr, param_groups
from yolov2.errors import ConfigError


def test_fused_sgd_step_matches_the_update_rule():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1, bias=False))
    lr, momentum, decay = 0.1, 0.9, 0.01
    optimizer = build_sgd(model, lr, momentum, decay)
    decayed = {id(p) for p in param_groups(model, decay)[0]["params"]}
    assert decayed == {id(model[0].weight), id(model[2].weight)}
    params = list(model.parameters())
    weights = [p.detach().clone() for p in params]
    buffers = [torch.zeros_like(w) for w in weights]
    for step in range(3):
        grads = [torch.randn_like(p) for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()
        for i, (p, g) in enumerate(zip(params, grads)):
            d_p = g + decay * weights[i] if id(p) in decayed else g
            buffers[i] = d_p if step == 0 else momentum * buffers[i] + d_p  # torch starts the buffer at d_p
            weights[i] = weights[i] - lr * buffers[i]
    for p, w in zip(params, weights):
        torch.testing.assert_close(p.detach(), w, rtol=1e-5, atol=1e-6)


def test_adamw_step_matches_the_update_rule_with_decay_on_conv_weights_only():
    """One fused AdamW step against Adam's formulas written out (first step: m/(sqrt(v)+eps) = sign(g) scaled)."""
    import pytest

    from yolov2.engine.optim import build_optimizer
    from yolov2.errors import ConfigError

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    lr, beta1, decay, eps = 0.01, 0.8, 0.05, 1e-8
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = build_optimizer(model, "adamw", lr, beta1, decay)
    model(torch.randn(2, 3, 8, 8)).square().mean().backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    optimizer.step()
    for name, p in model.named_parameters():
        g = grads[name]
        m_hat, v_hat = g, g * g  # bias-corrected moments after one step
        wd = decay if name == "0.weight" else 0.0
        expected = before[name] * (1 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="train.optimizer"):
        build_optimizer(model, "lamb", lr, beta1, decay)


def darknet_get_current_rate(batch_num: int, learning_rate: float, burn_in: int, max_batches: int, power: float):
    """Darknet's src/network.c get_current_rate for policy=poly, transcribed (burn-in uses net->power too)."""
    if batch_num < burn_in:
        return learning_rate * pow(batch_num / burn_in, power)
    return learning_rate * pow(1 - batch_num / max_batches, power)


@pytest.mark.parametrize("burn_in,power", [(100, 4.0), (0, 4.0), (50, 1.0), (1000, 2.0)])
def test_darknet_poly_lr_matches_get_current_rate(burn_in, power):
    """Optimizer step s (0-based) is Darknet's batch s + 1: train_network_datum adds the batch to net->seen
    before update_network asks for the rate."""
    max_batches, lr = 1000, 0.1
    for step in range(max_batches):
        expected = darknet_get_current_rate(step + 1, lr, burn_in, max_batches, power)
        assert darknet_poly_lr(step, lr, burn_in, max_batches, power) == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_darknet_poly_lr_boundaries():
    lr, burn_in, max_batches = 0.1, 100, 1000
    assert darknet_poly_lr(0, lr, burn_in, max_batches) == pytest.approx(lr * 0.01**4)  # quartic burn-in from batch 1
    assert darknet_poly_lr(98, lr, burn_in, max_batches) == pytest.approx(lr * 0.99**4)  # last burn-in step
    # batch == burn_in: already the poly decay, not the burn-in's full rate (Darknet's `batch_num < burn_in`)
    assert darknet_poly_lr(99, lr, burn_in, max_batches) == pytest.approx(lr * 0.9**4)
    assert darknet_poly_lr(100, lr, burn_in, max_batches) == pytest.approx(lr * (1 - 101 / 1000) ** 4)
    assert darknet_poly_lr(998, lr, burn_in, max_batches) == pytest.approx(lr * 0.001**4)
    assert darknet_poly_lr(999, lr, burn_in, max_batches) == 0.0  # the last step: batch == max_batches
    assert darknet_poly_lr(1500, lr, burn_in, max_batches, power=0.5) == 0.0  # past the end: 0, not NaN
    with pytest.raises(ConfigError):
        darknet_poly_lr(0, lr, burn_in, 0)
