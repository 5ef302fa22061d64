"""What a stage records in its MLflow run: params (secrets never sent), metrics, artifacts, figures, the model.

``mlflow`` is imported inside the functions (about 2 s; see :mod:`pipelines.tracking.server`).
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Parameter names or values that look like credentials are never sent to MLflow.
_SECRET_NAME = re.compile(r"(secret|token|password|passwd|api[_-]?key|access[_-]?key|credential)", re.I)
# The password part of a URL's user info (scheme://user:password@host), e.g. a database tracking URI.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*):[^/@\s]+@")
_MAX_PARAM_CHARS = 6000
EXAMPLE_BATCH = 2  # images in the logged model's input example (see log_final_model)


def mask_secrets(text: str) -> str:
    """``scheme://user:password@host`` -> ``scheme://user:***@host`` (for printing URIs)."""
    return _URL_PASSWORD.sub(r"\g<head>:***@", text)


def safe_params(params: dict[str, Any]) -> dict[str, str]:
    """Stringify params for MLflow: secret-looking names dropped, URL passwords masked, long values capped."""
    out = {}
    for key, value in params.items():
        if _SECRET_NAME.search(key):
            continue
        text = mask_secrets(str(value))
        out[key] = text if len(text) <= _MAX_PARAM_CHARS else text[: _MAX_PARAM_CHARS - 3] + "..."
    return out


def log_params(params: dict[str, Any]) -> None:
    import mlflow

    items = list(safe_params(params).items())
    for start in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
        mlflow.log_params(dict(items[start : start + 100]))


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    import mlflow

    clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if clean:
        mlflow.log_metrics(clean, step=step)


def log_artifact_bytes(data: bytes, name: str, artifact_path: str | None = None) -> None:
    """Log in-memory bytes as an artifact file called ``name``."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_figure(figure: Any, name: str) -> None:
    import mlflow

    mlflow.log_figure(figure, name)


def log_final_model(model: torch.nn.Module, register_name: str | None, model_file: Path, input_size: int) -> None:
    """``mlflow.pytorch.log_model`` (+ registration) and the plain model file as an artifact."""
    import mlflow
    import numpy as np

    mlflow.log_artifact(str(model_file))
    try:
        # MLflow 3 saves the model with torch.export, which fixes a batch size of 1 in the example as the only
        # one the model takes (warning "dimension inputs[0].shape[0] 0/1 specialized"): two keep it free.
        example = np.zeros((EXAMPLE_BATCH, 3, input_size, input_size), np.float32)
        mlflow.pytorch.log_model(model.eval(), name="model", registered_model_name=register_name, input_example=example)
    except Exception as e:  # registry unsupported by the store, or no network for the pip env inference
        log.warning("mlflow.pytorch.log_model failed (%s); model.pt is logged as an artifact instead", e)
