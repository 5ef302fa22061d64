"""Shared fixtures: the real datasets in ../shared/data, and one local Ray instance per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    # Here rather than in pyproject.toml, whose change would make `make` reinstall the venv.
    config.addinivalue_line(
        "markers",
        "security: security checks (unsafe loading, archive extraction, loopback "
        "services, Ray token authentication, secrets, cluster network rules); "
        "benchmarks/reliability.py can report them by this marker",
    )


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
def ray_token_file(tmp_path_factory) -> Path:
    """Token authentication for this test session, set up as pipelines/ray_runtime.py does for a local instance,
    with a token file of the session's own (in a temporary folder, not ~/.yolov2-pipeline): RAY_AUTH_MODE=token and
    RAY_AUTH_TOKEN_PATH in this process's environment, so the Ray instances, drivers and `ray` commands the tests
    start inherit them. Whatever the shell exported (a cluster's token, RAY_AUTH_MODE=disabled) is not used: the
    suite runs what the project runs by default."""
    from pipelines import ray_auth

    for name in (ray_auth.MODE_ENV, ray_auth.TOKEN_ENV, ray_auth.TOKEN_PATH_ENV):
        os.environ.pop(name, None)
    token_file = tmp_path_factory.mktemp("ray-auth") / "token"
    ray_auth.configure(starts_local=True, default_token_file=token_file)
    return token_file


@pytest.fixture(scope="session")
def ray_local(ray_token_file):
    """A local Ray instance (2 CPUs) shared by every test that needs one, with token authentication.

    With its dashboard (on 127.0.0.1), as pipelines/ray_runtime.py starts it: the dashboard serves the state
    API, and Ray Train's placement-group cleaner takes a failed actor lookup for a dead controller and removes
    the workers' placement group (seen under load: a training run lost its workers and restarted).
    """
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False, configure_logging=False
        )
    yield ray
    ray.shutdown()
