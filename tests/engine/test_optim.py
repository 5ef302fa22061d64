"""build_sgd's (fused) step against SGD with momentum written out, decay on conv weights only."""

from __future__ import annotations

import torch
from torch import nn

from yolov2.engine.optim import build_sgd, param_groups


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
