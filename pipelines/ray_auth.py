"""Ray token authentication for every Ray this project starts or joins (Ray >= 2.52, ``RAY_AUTH_MODE=token``).

With token authentication, Ray's GCS, raylets, dashboard and job API refuse any client that does not present the
cluster's token. Without it, anyone who can reach Ray's ports (the GCS, raylet and object-manager ports listen on
every interface) can submit a job, which means running code as the user who started Ray.

Where a process gets its token, in Ray's own order: ``RAY_AUTH_TOKEN`` (the token itself), ``RAY_AUTH_TOKEN_PATH``
(a file holding it), else Ray's default file ``~/.ray/auth_token``. This project adds one rule: a local Ray
instance it starts gets a token file of its own, ``~/.yolov2-pipeline/ray_auth_token``, created on first use with
mode 0600 in a 0700 folder and handed to Ray (and every process Ray starts) through ``RAY_AUTH_TOKEN_PATH``. Ray's
own ``ray get-auth-token --generate`` writes ``~/.ray/auth_token`` with the umask's mode (usually 0644: readable by
every local user), which is why this project makes its own files. The token itself is never printed or logged,
only the path of its file.

``RAY_AUTH_MODE=disabled``, exported by the user, still runs Ray without authentication, with a warning that says
what that exposes; ``RAY_AUTH_MODE`` unset means token.

    python -m pipelines.ray_auth token-file FILE   # FILE holds a token afterwards (a new one if it was missing)
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from yolov2.errors import YoloV2Error

MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
STATE_DIR = ".yolov2-pipeline"  # under the user's home: this project's per-user state

log = logging.getLogger(__name__)


class RayAuthError(YoloV2Error):
    """Ray's authentication is misconfigured, or a cluster refused this process's token."""


@dataclass(frozen=True)
class AuthSetup:
    """What ``configure`` decided: the mode, and where the token comes from (for messages; never the token)."""

    mode: str  # "token" or "disabled"
    source: str  # e.g. "the token file /home/me/.yolov2-pipeline/ray_auth_token"; "" when disabled


def local_token_path() -> Path:
    """The token file of the local Ray instances this project starts (``ray_runtime.connect``)."""
    return Path.home() / STATE_DIR / "ray_auth_token"


def cluster_token_path() -> Path:
    """The cloud cluster's token file on the user's machine (``make cluster-token``; ``ray_cluster.yaml`` carries it
    to the same path on every node)."""
    return Path.home() / STATE_DIR / "cluster_auth_token"


def ray_default_token_path() -> Path:
    """Ray's own default token file, used when neither RAY_AUTH_TOKEN nor RAY_AUTH_TOKEN_PATH is set."""
    return Path.home() / ".ray" / "auth_token"


def requested_mode() -> str:
    """``token`` unless the user exported ``RAY_AUTH_MODE=disabled``."""
    value = os.environ.get(MODE_ENV, "").strip().lower()
    if value in ("", "token"):
        return "token"
    if value == "disabled":
        return "disabled"
    raise RayAuthError(
        f"{MODE_ENV}={value!r} is not a Ray authentication mode: unset it (token authentication, "
        f"the default) or export {MODE_ENV}=disabled to run without authentication"
    )


def disabled_warning() -> str:
    return (
        f"{MODE_ENV}=disabled: Ray runs without token authentication. Its GCS, raylet and object-manager ports "
        "listen on every network interface of this machine and its dashboard and job API on 127.0.0.1, so anyone "
        "who can reach them can submit jobs, which run code as this user, and read the data Ray holds. "
        f"Unset {MODE_ENV} to turn token authentication back on."
    )


def check_token_file(path: Path, named_by: str) -> None:
    """A usable token file: a regular file of this user's, not empty, that no other user can read or write
    (as ssh asks of a private key). ``named_by`` says where the path came from, for the message."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise RayAuthError(
            f"Ray token file {path} ({named_by}) does not exist: point {TOKEN_PATH_ENV} at the "
            f"cluster's token file, or create one with `python -m pipelines.ray_auth token-file "
            f"{path}`"
        ) from None
    except OSError as e:
        raise RayAuthError(f"Ray token file {path} ({named_by}) cannot be read: {e.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise RayAuthError(f"Ray token file {path} ({named_by}) is not a regular file")
    if info.st_uid != os.getuid():
        raise RayAuthError(
            f"Ray token file {path} ({named_by}) belongs to user id {info.st_uid}, not to you "
            f"({os.getuid()}): use a token file of your own"
        )
    if info.st_mode & 0o077:
        raise RayAuthError(
            f"Ray token file {path} ({named_by}) can be accessed by other users (mode "
            f"{stat.S_IMODE(info.st_mode):04o}): run `chmod 600 {path}`"
        )
    if info.st_size == 0:
        raise RayAuthError(
            f"Ray token file {path} ({named_by}) is empty: delete it and rerun, or point "
            f"{TOKEN_PATH_ENV} at the cluster's token file"
        )


def ensure_token_file(path: Path) -> Path:
    """``path`` holds a token afterwards: a fresh random one (256 bits, as Ray's own), mode 0600, written whole
    before it appears (a concurrent caller finds either no file or the complete one), unless the file exists;
    an existing file is checked, never overwritten. A folder created here gets mode 0700."""
    path = path.expanduser().absolute()
    if not os.path.lexists(path):
        try:
            _write_new_token(path)
        except OSError as e:
            raise RayAuthError(
                f"cannot create the Ray token file {path}: {e.strerror}; point {TOKEN_PATH_ENV} at "
                f"a token file elsewhere"
            ) from None
    check_token_file(path, "this project's token file")
    return path


def _write_new_token(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)  # atomic, and never replaces a file another process made meanwhile
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


def configure(starts_local: bool, default_token_file: Path | None = None) -> AuthSetup:
    """Set ``RAY_AUTH_MODE`` (and ``RAY_AUTH_TOKEN_PATH`` when the token comes from this project's file) for this
    process and every Ray process it starts, and make an already imported Ray read them. Call before ``ray.init``.

    ``starts_local``: no cluster address was given, so a token file of this project's (``default_token_file``,
    default ``local_token_path()``) is made if the environment names no token. Joining a cluster never makes one:
    the token must be the cluster's."""
    if requested_mode() == "disabled":
        log.warning("%s", disabled_warning())
        setup = AuthSetup("disabled", "")
    else:
        os.environ[MODE_ENV] = "token"
        setup = AuthSetup("token", _token_source(starts_local, default_token_file or local_token_path()))
    _reload_ray_auth()
    return setup


def _token_source(starts_local: bool, default_token_file: Path) -> str:
    if os.environ.get(TOKEN_ENV):
        return f"the {TOKEN_ENV} environment variable"
    if os.environ.get(TOKEN_PATH_ENV):
        path = Path(os.environ[TOKEN_PATH_ENV]).expanduser()
        check_token_file(path, TOKEN_PATH_ENV)
        return f"the token file {path} ({TOKEN_PATH_ENV})"
    if starts_local:
        path = ensure_token_file(default_token_file)
        os.environ[TOKEN_PATH_ENV] = str(path)
        return f"the token file {path}"
    ray_default = ray_default_token_path()
    if ray_default.exists():
        check_token_file(ray_default, "Ray's default token file")
        return f"Ray's default token file {ray_default}"
    raise RayAuthError(
        f"joining a Ray cluster with token authentication needs the cluster's token, and none is "
        f"set: {how_to_pass_the_token()}"
    )


def how_to_pass_the_token() -> str:
    return (
        f"export {MODE_ENV}=token {TOKEN_PATH_ENV}=<the cluster's token file> (`cluster/local_cluster.sh up` "
        f"prints it; for the cloud cluster it is {cluster_token_path()}, made by `make cluster-token`), or, if "
        f"that cluster runs without authentication, export {MODE_ENV}=disabled"
    )


def _reload_ray_auth() -> None:
    """Ray reads RAY_AUTH_MODE and the token once per process and keeps them: a driver that imported Ray before
    they were set would start a token-protected instance and then be refused by it as 'disabled'. Reload both,
    as Ray's own ray.init() does when it turns token authentication on by itself."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def is_refusal(error: BaseException) -> bool:
    """Whether ``ray.init`` failed because the cluster refused this process's token (Ray wraps the
    AuthenticationError of its GCS client in a RuntimeError, then in a ConnectionError, keeping only its text)."""
    from ray.exceptions import AuthenticationError

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, AuthenticationError) or "InvalidAuthToken" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def refused(address: str | None, setup: AuthSetup) -> RayAuthError:
    """The error for a driver the cluster at ``address`` refused: what it presented and how to pass the right token."""
    where = f"Ray at {address}" if address else "the Ray cluster on this machine"
    presented = "no token (RAY_AUTH_MODE=disabled)" if setup.mode == "disabled" else setup.source
    return RayAuthError(
        f"{where} refused this driver's authentication; it presented {presented}. Pass that "
        f"cluster's token: {how_to_pass_the_token()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.ray_auth", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    token_file = commands.add_parser(
        "token-file",
        help="make sure FILE holds a Ray token (created, mode 0600, if missing); prints the path, never the token",
    )
    token_file.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    existed = os.path.lexists(args.file)
    try:
        path = ensure_token_file(args.file)
    except RayAuthError as e:
        print(f"pipelines.ray_auth: {e}", file=sys.stderr)
        return 2
    print(f"Ray token file: {path} ({'exists' if existed else 'created'}, mode 0600)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
