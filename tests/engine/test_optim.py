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
