"""Fixtures for the model tests: the Darknet cfg files, and each big model built once per session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn


@pytest.fixture(scope="session")
def cfg_dir(shared_data: Path) -> Path:
    path = shared_data / "darknet_cfg"
    if not (path / "yolov2-voc.cfg").is_file():
        pytest.skip(f"Darknet cfg files not found in {path}")
    return path


@pytest.fixture(scope="session")
def cfg_model(cfg_dir: Path) -> Callable[[str], nn.Module]:
    """cfg_model("yolov2-voc.cfg") -> that cfg's network, built once per session (50M parameters for
    the full YOLOv2 cfgs, so don't build them in every test). Tests may load weights into it."""
    from yolov2.models import build_from_darknet_cfg

    cache: dict[str, nn.Module] = {}

    def get(name: str) -> nn.Module:
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = build_from_darknet_cfg(cfg_dir / name).eval()
        return cache[name]

    return get


def randomize_bn_stats(model: nn.Module, seed: int = 0) -> None:
    """Give every batch norm non-trivial running statistics and affine parameters, so that a test
    comparing outputs also checks that these were carried over."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)


@pytest.fixture(scope="session")
def randomize_bn() -> Callable[[nn.Module, int], None]:
    """The :func:`randomize_bn_stats` helper, as a fixture (conftest modules are not imported by tests)."""
    return randomize_bn_stats


@pytest.fixture(autouse=True, scope="module")
def single_thread_torch():
    """One intra-op thread: these forward passes are small, and on a shared 2-core machine two
    spinning threads cost several times more than they save. Restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
