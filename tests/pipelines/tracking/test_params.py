"""Secrets never reach MLflow: URL passwords masked (params beyond this: tests/test_security.py)."""

from __future__ import annotations

from pipelines import tracking


def test_mask_secrets():
    assert tracking.mask_secrets("postgresql://me:pw@db:5432/mlflow") == "postgresql://me:***@db:5432/mlflow"
    assert tracking.mask_secrets("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
