"""pipelines/ray_auth.py without a Ray instance: which mode and token a process gets, the token file's rules, the
explicit RAY_AUTH_MODE=disabled and its warning, and the `token-file` command. The live checks (a real instance
refusing clients without the token) are in tests/test_security.py.

Every test runs with its own home folder and no Ray variables in the environment (restored afterwards), and with
Ray's configuration reload replaced: this process may have a Ray instance running for other tests."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import ray_auth
from pipelines.ray_auth import RayAuthError

pytestmark = pytest.mark.security
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in (ray_auth.MODE_ENV, ray_auth.TOKEN_ENV, ray_auth.TOKEN_PATH_ENV):
        monkeypatch.delenv(name, raising=False)  # and what configure() sets is undone after the test
    reloads = []
    monkeypatch.setattr(ray_auth, "_reload_ray_auth", lambda: reloads.append(os.environ.get(ray_auth.MODE_ENV)))
    return home


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_local_start_makes_a_private_token_file_once_and_hands_it_to_ray(clean_env):
    setup = ray_auth.configure(starts_local=True)
    token_file = clean_env / ".yolov2-pipeline" / "ray_auth_token"
    assert setup == ray_auth.AuthSetup("token", f"the token file {token_file}")
    assert os.environ[ray_auth.MODE_ENV] == "token" and os.environ[ray_auth.TOKEN_PATH_ENV] == str(token_file)
    assert _mode(token_file) == 0o600 and _mode(token_file.parent) == 0o700
    token = token_file.read_text()
    assert len(token) == 64 and int(token, 16) >= 0
    assert not list(token_file.parent.glob(".*")), "no temporary file left behind"

    del os.environ[ray_auth.TOKEN_PATH_ENV]
    ray_auth.configure(starts_local=True)
    assert token_file.read_text() == token, "an existing token file is reused, never overwritten"


def test_the_token_named_by_the_environment_wins(clean_env, tmp_path):
    mine = tmp_path / "cluster_token"
    ray_auth.ensure_token_file(mine)
    os.environ[ray_auth.TOKEN_PATH_ENV] = str(mine)
    assert ray_auth.configure(starts_local=True).source == f"the token file {mine} (RAY_AUTH_TOKEN_PATH)"
    assert not (clean_env / ".yolov2-pipeline").exists(), "no project token is made when one is named"
    os.environ[ray_auth.TOKEN_ENV] = "f" * 64
    assert ray_auth.configure(starts_local=False).source == "the RAY_AUTH_TOKEN environment variable"


def test_joining_never_makes_a_token_and_says_how_to_pass_the_clusters(clean_env):
    with pytest.raises(RayAuthError) as error:
        ray_auth.configure(starts_local=False)
    message = str(error.value)
    assert "needs the cluster's token" in message
    assert "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=<the cluster's token file>" in message
    assert str(clean_env / ".yolov2-pipeline" / "cluster_auth_token") in message and "make cluster-token" in message
    assert not (clean_env / ".yolov2-pipeline").exists()
    # Ray's own default file, when present (and private), is what Ray then uses
    default = clean_env / ".ray" / "auth_token"
    default.parent.mkdir()
    default.write_text("a" * 64)
    default.chmod(0o600)
    assert ray_auth.configure(starts_local=False).source == f"Ray's default token file {default}"


@pytest.mark.parametrize(
    "problem, expected",
    [
        ("missing", "does not exist: point RAY_AUTH_TOKEN_PATH at the cluster's token file, or create one"),
        ("readable", "can be accessed by other users (mode 0644): run `chmod 600 "),
        ("group_writable", "can be accessed by other users (mode 0620)"),
        ("empty", "is empty"),
        ("directory", "is not a regular file"),
    ],
)
def test_a_bad_token_file_is_refused_with_what_to_do(tmp_path, problem, expected):
    path = tmp_path / "token"
    if problem == "directory":
        path.mkdir()
    elif problem != "missing":
        path.write_text("" if problem == "empty" else "b" * 64)
        path.chmod({"readable": 0o644, "group_writable": 0o620}.get(problem, 0o600))
    os.environ[ray_auth.TOKEN_PATH_ENV] = str(path)
    with pytest.raises(RayAuthError, match="Ray token file") as error:
        ray_auth.configure(starts_local=True)
    assert f"{path} (RAY_AUTH_TOKEN_PATH)" in str(error.value) and expected in str(error.value)


def test_a_token_file_of_another_user_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "token"
    ray_auth.ensure_token_file(path)
    monkeypatch.setattr(os, "getuid", lambda: path.stat().st_uid + 1)
    with pytest.raises(RayAuthError, match="belongs to user id"):
        ray_auth.check_token_file(path, "test")


def test_a_token_file_that_cannot_be_made_is_a_clear_error(tmp_path, monkeypatch):
    home = tmp_path / "not-a-folder"
    home.write_text("")  # mkdir under it fails, whoever runs the test (root too)
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(
        RayAuthError,
        match="cannot create the Ray token file .*: Not a directory; point "
        "RAY_AUTH_TOKEN_PATH at a token file elsewhere",
    ):
        ray_auth.configure(starts_local=True)


def test_disabled_only_when_exported_and_then_a_warning_says_what_it_exposes(clean_env, caplog):
    os.environ[ray_auth.MODE_ENV] = "disabled"
    with caplog.at_level(logging.WARNING, logger="pipelines.ray_auth"):
        setup = ray_auth.configure(starts_local=True)
    assert setup == ray_auth.AuthSetup("disabled", "")
    assert os.environ[ray_auth.MODE_ENV] == "disabled" and ray_auth.TOKEN_PATH_ENV not in os.environ
    assert not (clean_env / ".yolov2-pipeline").exists()
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("RAY_AUTH_MODE=disabled: Ray runs without token authentication")
    assert "every network interface" in warning and "submit jobs, which run code as this user" in warning
    assert "Unset RAY_AUTH_MODE" in warning


@pytest.mark.parametrize("value", ["", "token", "TOKEN", " token "])
def test_unset_or_token_means_token(value):
    os.environ[ray_auth.MODE_ENV] = value
    assert ray_auth.requested_mode() == "token"


def test_an_unknown_mode_is_refused():
    os.environ[ray_auth.MODE_ENV] = "off"
    with pytest.raises(RayAuthError, match="RAY_AUTH_MODE='off' is not a Ray authentication mode"):
        ray_auth.configure(starts_local=True)


def test_a_refusal_is_recognised_through_rays_wrapping_and_explained():
    from ray.exceptions import AuthenticationError

    # What ray.init raises when the GCS refuses the token (seen with Ray 2.60): the AuthenticationError's text
    # inside a RuntimeError, which is the cause of a ConnectionError.
    try:
        try:
            raise RuntimeError(
                "Failed to connect to GCS. Last connection error: Traceback ...\n"
                "ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: Authentication "
                "token is missing or incorrect."
            )
        except RuntimeError as inner:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.5:6379") from inner
    except ConnectionError as e:
        wrapped = e
    assert ray_auth.is_refusal(wrapped)
    assert ray_auth.is_refusal(AuthenticationError("RPC error: InvalidAuthToken"))
    assert not ray_auth.is_refusal(ConnectionError("Failed to connect to Ray cluster at 10.0.0.5:6379"))

    presented = ray_auth.AuthSetup("token", "the token file /t (RAY_AUTH_TOKEN_PATH)")
    message = str(ray_auth.refused("10.0.0.5:6379", presented))
    assert message.startswith(
        "Ray at 10.0.0.5:6379 refused this driver's authentication; it presented the token "
        "file /t (RAY_AUTH_TOKEN_PATH). Pass that cluster's token: export RAY_AUTH_MODE=token"
    )
    disabled = str(ray_auth.refused(None, ray_auth.AuthSetup("disabled", "")))
    assert "the Ray cluster on this machine" in disabled and "no token (RAY_AUTH_MODE=disabled)" in disabled


def test_token_file_command_creates_once_and_prints_only_the_path(clean_env, tmp_path):
    """`make cluster-token` and cluster/local_cluster.sh use this command; it must work with a bare Python (no
    venv: `make cluster-token` runs python3) and never print the token."""
    path = tmp_path / "state" / "cluster_auth_token"
    command = [sys.executable, "-m", "pipelines.ray_auth", "token-file", str(path)]
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"Ray token file: {path} (created, mode 0600)\n"
    token = path.read_text()
    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert second.stdout == f"Ray token file: {path} (exists, mode 0600)\n" and path.read_text() == token
    path.chmod(0o644)
    third = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert third.returncode == 2 and f"run `chmod 600 {path}`" in third.stderr
    for run in (first, second, third):
        assert token not in run.stdout + run.stderr


def test_the_token_file_command_imports_no_ray():
    """It runs on the user's machine before `ray up`, with any Python 3."""
    code = "import sys, pipelines.ray_auth; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60).returncode == 0
