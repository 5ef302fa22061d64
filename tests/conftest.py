"""Shared fixtures: the real datasets in ../shared/data, and one local Ray instance per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    return Path(os.environ.get("YOLOV2_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The small real datasets (raccoon, voc100, coco_tiny, darknet_cfg, metric_cases)."""
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(f"shared datasets not found at {root} (set YOLOV2_SHARED_DATA to their folder)")
    return root


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance (2 CPUs) shared by every test that needs one.

    With its dashboard (on 127.0.0.1), as pipelines/ray_runtime.py starts it: the dashboard serves the state
    API, and Ray Train's placement-group cleaner takes a failed actor lookup for a dead controller and removes
    the workers' placement group (seen under load: a training run lost its workers and restarted).
    """
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False,
                 configure_logging=False)
    yield ray
    ray.shutdown()
