"""Secrets never reach MLflow: URL passwords masked (params beyond this: tests/test_security.py); the model
logged to MLflow takes any batch size."""

from __future__ import annotations

from pipelines import tracking
from pipelines.workspace import Workspace


def test_mask_secrets():
    assert tracking.mask_secrets("postgresql://me:pw@db:5432/mlflow") == "postgresql://me:***@db:5432/mlflow"
    assert tracking.mask_secrets("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_the_logged_model_takes_any_batch_size(tmp_path):
    import mlflow
    import torch

    from yolov2.models import build_model

    model = build_model("yolov2_tiny_voc", num_classes=2, width_multiplier=0.25)
    tracking.setup_mlflow(None, "final-model", Workspace.open(tmp_path))
    (tmp_path / "model.pt").write_bytes(b"the plain model file")
    with mlflow.start_run():
        tracking.log_final_model(model, None, tmp_path / "model.pt", 64)
    loaded = mlflow.pytorch.load_model(mlflow.last_logged_model().model_uri)
    for batch in (1, 3):  # an example of one image would fix the batch size at 1
        assert loaded(torch.zeros(batch, 3, 64, 64)).shape[0] == batch
