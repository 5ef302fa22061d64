"""Training checkpoints: everything needed to resume exactly, loadable with ``weights_only=True``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled objects), so
``torch.load(path, weights_only=True)`` reads it and a file carrying arbitrary code is refused.
Writes are atomic (temp file, then rename).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from yolov2.errors import WeightsError
from yolov2.io import atomic_output


def rng_state() -> dict[str, Any]:
    """Python, NumPy (legacy global) and torch CPU generator states, as weights_only-safe values."""
    np_state = np.random.get_state(legacy=True)  # legacy=True is the default; spelled out for the type checker
    assert isinstance(np_state, tuple)  # the global RandomState is MT19937, whose legacy state is a tuple
    return {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            *map(int, np_state[2:4]),
            float(np_state[4]),
        ],
        "torch": torch.get_rng_state(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (see :func:`make_state`) with ``torch.save``."""
    with atomic_output(path, prefix=".tmp-", suffix=".pt", mode=None) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; a file with pickled objects is refused clearly."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch raises UnpicklingError (or RuntimeError) for unsafe content
        raise WeightsError(f"{path}: not a safe checkpoint (weights_only load refused it: {e})") from e


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside a DDP wrapper (its ``.module``), or the model itself."""
    return cast(torch.nn.Module, model.module) if hasattr(model, "module") else model


def model_state_for_export(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the bare model, unwrapped from DDP (``module.``) if needed."""
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
