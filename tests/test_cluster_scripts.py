"""The scripts in cluster/, run for real: syntax, --help, the MLflow server on 127.0.0.1 (checked at
the listening socket), the node set-up's idempotence, and (slow) the local two-node Ray cluster.

Every server or cluster a test starts runs in its own session and is stopped in a `finally`.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
SCRIPTS = sorted(p.name for p in CLUSTER.glob("*.sh"))
VENV_BIN = Path(sys.executable).parent


def run(args: list[str], timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket in LISTEN on ``port``, any process (from /proc/net/tcp*)."""
    found = set()
    for table in ["/proc/net/tcp", "/proc/net/tcp6"]:
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address_hex, port_hex = fields[1].split(":")
            if fields[3] != "0A" or int(port_hex, 16) != port:  # 0A: TCP_LISTEN
                continue
            raw = bytes.fromhex(address_hex)
            # the kernel prints each 32-bit word in host (little-endian) order
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            address = ipaddress.ip_address(words)
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                address = address.ipv4_mapped
            found.add(str(address))
    return found


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, session id) of a process from /proc/<pid>/stat, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[3])


def all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace").split("\0")
    except OSError:
        return []


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read().decode("utf-8", "replace")


def wait_http(url: str, proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            return http_get(url)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout}s")


def session_processes(sid: int) -> list[int]:
    """Live (non-zombie) processes in session ``sid``."""
    found = []
    for pid in all_pids():
        stat = proc_stat(pid)
        if stat is not None and stat[1] == sid and stat[0] != "Z":
            found.append(pid)
    return found


def stop_session(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM to the whole process group started with start_new_session, then SIGKILL."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    for leftover in session_processes(proc.pid):
        try:
            os.kill(leftover, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)
    assert not session_processes(proc.pid), "processes of the server outlived it"


# ---------------------------------------------------------------------------------------------
# Every script
# ---------------------------------------------------------------------------------------------


def test_every_expected_script_is_here():
    assert SCRIPTS == ["aws_security_group.sh", "local_cluster.sh", "mlflow_server.sh", "setup_node.sh"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_bash_syntax(name):
    result = run(["bash", "-n", str(CLUSTER / name)])
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(name):
    result = run([str(CLUSTER / name), "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: cluster/{name}")
    assert "-h, --help" in result.stdout


@pytest.mark.parametrize("name", SCRIPTS)
def test_unknown_argument_is_refused(name):
    result = run([str(CLUSTER / name), "--no-such-option"])
    assert result.returncode == 2
    assert "unknown argument: --no-such-option" in result.stderr


# ---------------------------------------------------------------------------------------------
# mlflow_server.sh
# ---------------------------------------------------------------------------------------------


def test_mlflow_dry_run_defaults_and_masks_the_password(tmp_path):
    env = dict(os.environ, MLFLOW_BACKEND_STORE_URI="postgresql://mlflow:s3cret-pw@db.internal:5432/mlflow")
    result = run(
        [str(CLUSTER / "mlflow_server.sh"), "--dry-run", "--artifacts-destination", str(tmp_path / "a")],
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "s3cret-pw" not in result.stdout + result.stderr
    assert "postgresql://mlflow:***@db.internal:5432/mlflow" in result.stdout
    assert "MLflow UI:             http://127.0.0.1:5000" in result.stdout
    assert "--host 127.0.0.1 --port 5000" in result.stdout

    local = run([str(CLUSTER / "mlflow_server.sh"), "--dry-run", "--workspace", "ws"], cwd=tmp_path)
    assert f"sqlite:///{tmp_path / 'ws' / 'mlflow.db'}" in local.stdout  # the pipeline's own local store
    assert f"{tmp_path / 'ws' / 'mlartifacts'} (proxied by the server)" in local.stdout


def test_mlflow_refuses_a_busy_port(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run([str(CLUSTER / "mlflow_server.sh"), "--workspace", str(tmp_path / "ws"), "--port", str(port)])
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


@pytest.fixture(scope="module")
def mlflow_root(tmp_path_factory) -> Path:
    """One folder for this module's servers: the second server finds the SQLite schema already
    created (migrations take several seconds on a loaded 2-core machine)."""
    return tmp_path_factory.mktemp("mlflow")


def _start_mlflow(root: Path, port: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            str(CLUSTER / "mlflow_server.sh"),
            "--workspace",
            str(root / "ws"),
            "--port",
            str(port),
            "--workers",
            "1",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        cwd=root,
    )


def test_mlflow_server_answers_on_loopback_only_and_uses_the_workspace_store(mlflow_root):
    port = free_port()
    proc = _start_mlflow(mlflow_root, port)
    try:
        status, body = wait_http(f"http://127.0.0.1:{port}/health", proc, timeout=120)
        assert (status, body.strip()) == (200, "OK")
        status, page = http_get(f"http://127.0.0.1:{port}/")
        assert status == 200 and "<html" in page.lower()
        assert listening_addresses(port) == {"127.0.0.1"}, "the server must bind 127.0.0.1 only"
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/create",
            data=json.dumps({"name": "cluster-script-test"}).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            experiment_id = json.loads(response.read())["experiment_id"]
        # Read the SQLite file directly: the server's store is the workspace's mlflow.db.
        with sqlite3.connect(mlflow_root / "ws" / "mlflow.db") as db:
            rows = db.execute(
                "SELECT experiment_id, name FROM experiments WHERE name = ?", ("cluster-script-test",)
            ).fetchall()
        assert [(str(r[0]), r[1]) for r in rows] == [(experiment_id, "cluster-script-test")]
    finally:
        stop_session(proc)
    output = proc.stdout.read()
    assert f"MLflow UI:             http://127.0.0.1:{port}" in output
    assert not listening_addresses(port)


def test_mlflow_server_also_binds_a_second_address(mlflow_root):
    """The cluster head binds 127.0.0.1 (SSH tunnel) and its private IP (workers); 127.0.0.2 stands
    in for the private IP here."""
    port = free_port()
    proc = _start_mlflow(mlflow_root, port, "--also-bind", "127.0.0.2")
    try:
        assert wait_http(f"http://127.0.0.1:{port}/health", proc, timeout=120)[0] == 200
        assert http_get(f"http://127.0.0.2:{port}/health")[0] == 200
        assert listening_addresses(port) == {"127.0.0.1", "127.0.0.2"}
    finally:
        stop_session(proc)


# ---------------------------------------------------------------------------------------------
# setup_node.sh
# ---------------------------------------------------------------------------------------------

# A project whose build needs nothing from an index: an in-tree PEP 517/660 backend whose
# editable wheel is a .pth file pointing at the project, so the test runs offline.
TINY_BACKEND = """
import base64, hashlib, os, zipfile

NAME, VERSION = "tinypkg", "0.1"
DIST = f"{NAME}-{VERSION}.dist-info"


def _wheel(wheel_directory, files):
    files = dict(files)
    files[f"{DIST}/METADATA"] = f"Metadata-Version: 2.1\\nName: {NAME}\\nVersion: {VERSION}\\n".encode()
    files[f"{DIST}/WHEEL"] = b"Wheel-Version: 1.0\\nGenerator: tiny\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    files[f"{DIST}/RECORD"] = ("\\n".join(record + [f"{DIST}/RECORD,,"]) + "\\n").encode()
    name = f"{NAME}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return name


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    return _wheel(wheel_directory, {f"{NAME}.pth": (os.path.abspath(".") + "\\n").encode()})


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    return _wheel(wheel_directory, {f"{NAME}/__init__.py": open(f"{NAME}/__init__.py", "rb").read()})
"""

TINY_PYPROJECT = """\
[build-system]
requires = []
build-backend = "tiny_backend"
backend-path = ["."]

[project]
name = "tinypkg"
version = "0.1"
"""


def test_setup_node_installs_once_and_rewrites_its_bashrc_block(tmp_path):
    project = tmp_path / "proj"
    (project / "tinypkg").mkdir(parents=True)
    (project / "tinypkg" / "__init__.py").write_text("WHERE = __file__\n")
    (project / "tiny_backend.py").write_text(TINY_BACKEND)
    (project / "pyproject.toml").write_text(TINY_PYPROJECT)
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("# the user's own line\n")
    token_file = _node_token_file(home)
    token_file.chmod(0o644)  # as if it had arrived with a looser mode: setup_node.sh sets 0600
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}  # what the block sets, only
    env.update(HOME=str(home), PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    command = [str(CLUSTER / "setup_node.sh"), "--project", str(project), "--python", sys.executable]

    first = run(command, env=env, timeout=240)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "creating the venv" in first.stdout and "installing" in first.stdout
    venv_python = project / ".venv" / "bin" / "python"
    imported = run([str(venv_python), "-c", "import tinypkg; print(tinypkg.WHERE)"], cwd=tmp_path)
    assert imported.stdout.strip() == str(project / "tinypkg" / "__init__.py")  # editable: the checkout
    bashrc_after_first = (home / ".bashrc").read_text()
    assert bashrc_after_first.startswith("# the user's own line\n")
    assert bashrc_after_first.count("# >>> yolov2-pipeline >>>") == 1

    second = run(command, env=env, timeout=240)
    assert second.returncode == 0, second.stderr
    assert "reusing the venv" in second.stdout and "up to date" in second.stdout
    assert "installing" not in second.stdout
    assert (home / ".bashrc").read_text() == bashrc_after_first

    # A shell that reads the block: the cluster's token auth, the venv's Python, the project folder.
    shell = run(
        ["bash", "-c", "source ~/.bashrc; echo $RAY_AUTH_MODE $RAY_AUTH_TOKEN_PATH; command -v python; pwd"],
        env=env,
        cwd=home,
    )
    assert shell.stdout.split() == ["token", str(token_file), str(project / ".venv" / "bin" / "python"), str(project)]
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text()
    for result in (first, second):
        assert token not in result.stdout + result.stderr
    assert token not in (home / ".bashrc").read_text()

    (project / "pyproject.toml").write_text(TINY_PYPROJECT + "# pins changed\n")
    third = run(command, env=env, timeout=240)
    assert third.returncode == 0 and "installing" in third.stdout, third.stderr

    # Ray without authentication only when asked for, with a warning; no token file needed then.
    token_file.unlink()
    disabled = run([*command, "--ray-auth", "disabled"], env=env, timeout=240)
    assert disabled.returncode == 0, disabled.stderr
    assert "WARNING: --ray-auth disabled: Ray on this node runs without token authentication" in disabled.stderr
    assert "anyone who can reach the cluster's ports can submit jobs" in disabled.stderr
    shell = run(
        ["bash", "-c", "source ~/.bashrc; echo $RAY_AUTH_MODE ${RAY_AUTH_TOKEN_PATH:-unset}"], env=env, cwd=home
    )
    assert shell.stdout.split() == ["disabled", "unset"]


def _node_token_file(home: Path) -> Path:
    """The cluster's token file where ray_cluster.yaml's file_mounts put it on a node (home: the node's)."""
    path = home / ".yolov2-pipeline" / "cluster_auth_token"
    path.parent.mkdir(parents=True)
    path.write_text("c" * 64)
    path.chmod(0o600)
    return path


def test_setup_node_without_the_token_file_stops_before_installing_and_says_why(tmp_path):
    (tmp_path / "pyproject.toml").write_text(TINY_PYPROJECT)
    home = tmp_path / "home"
    home.mkdir()
    result = run(
        [str(CLUSTER / "setup_node.sh"), "--project", str(tmp_path), "--python", sys.executable],
        env=dict(os.environ, HOME=str(home)),
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"the Ray token file {home}/.yolov2-pipeline/cluster_auth_token is missing or empty" in result.stderr
    assert "run `make cluster-token` there before `ray up`" in result.stderr
    assert not (tmp_path / ".venv").exists() and not (home / ".bashrc").exists()


def test_setup_node_refuses_an_unknown_auth_mode(tmp_path):
    (tmp_path / "pyproject.toml").write_text(TINY_PYPROJECT)
    bad = run([str(CLUSTER / "setup_node.sh"), "--project", str(tmp_path), "--ray-auth", "off"])
    assert bad.returncode == 2 and "--ray-auth must be token or disabled, got 'off'" in bad.stderr


def test_setup_node_refuses_a_folder_without_pyproject(tmp_path):
    result = run([str(CLUSTER / "setup_node.sh"), "--project", str(tmp_path), "--no-bashrc"])
    assert result.returncode == 2
    assert f"{tmp_path}/pyproject.toml not found" in result.stderr


# ---------------------------------------------------------------------------------------------
# local_cluster.sh: two real Ray nodes on this machine
# ---------------------------------------------------------------------------------------------


def _port_block_is_free(base: int) -> bool:
    import socket

    for port in [*range(base, base + 20), base + 100, base + 150, base + 199, base + 200, base + 299]:
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                return False
    return True


def pick_cluster_port() -> int:
    """A block of 300 ports in 20000-31999: below the kernel's ephemeral range (where ray.init's
    random ports land) and above Ray's default worker ports (10002-19999), so a concurrent
    `ray.init(num_cpus=2)` cannot collide with it."""
    start = 20000 + (os.getpid() % 40) * 300
    for i in range(40):
        base = 20000 + (start - 20000 + i * 300) % 12000
        if _port_block_is_free(base):
            return base
    pytest.skip("no free block of 300 ports in 20000-31999")


PROBE = textwrap.dedent("""
    import json, os, sys
    import ray

    ray.init(address=sys.argv[1], log_to_driver=False)

    @ray.remote(num_cpus=1)
    def where():
        return ray.get_runtime_context().get_node_id()

    nodes = [{"id": n["NodeID"], "alive": n["Alive"],
              "custom": sorted(k for k in n["Resources"] if k.startswith("node_"))} for n in ray.nodes()]
    ran = {name: ray.get(where.options(resources={name: 0.5}).remote()) for name in ["node_head", "node_worker"]}
    print("PROBE " + json.dumps({"nodes": nodes, "ran": ran, "cwd": os.getcwd()}))
""")


def _without_ray_auth(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}


@pytest.mark.security
@pytest.mark.parametrize(
    "mode, expected",
    [
        ("off", "RAY_AUTH_MODE='off' is not a Ray authentication mode"),
        ("token", "can be written by other users: run chmod go-w"),
    ],
)
def test_local_cluster_refuses_a_bad_auth_mode_or_a_shared_temp_dir_before_starting(mode, expected):
    """Nothing starts: an unknown RAY_AUTH_MODE, or a temp dir (where the token file and Ray's sockets go) that
    other users can write to, is refused first."""
    import shutil
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="yolov2-s", dir="/tmp"))  # short: the script allows 40 characters
    try:
        shared.chmod(0o777)
        env = dict(_without_ray_auth(os.environ), RAY_AUTH_MODE=mode)
        result = run([str(CLUSTER / "local_cluster.sh"), "up", "--port", "23000", "--temp-dir", str(shared)], env=env)
        assert result.returncode == 2 and expected in result.stderr, result.stdout + result.stderr
        assert list(shared.iterdir()) == [], "no token file, no Ray session"
    finally:
        shutil.rmtree(shared)


@pytest.mark.slow
@pytest.mark.security
def test_local_cluster_two_nodes_pinned_tasks_job_submission_and_clean_down(ray_local, tmp_path):
    """With token authentication: `up` makes the token file (0600, in the temp dir) and prints its path, never
    the token; clients with RAY_AUTH_TOKEN_PATH join and submit jobs (which inherit the token), a wrong token
    is refused."""
    port = pick_cluster_port()
    temp_dir = f"/tmp/yolov2-t{port}"
    script = str(CLUSTER / "local_cluster.sh")
    args = ["--port", str(port), "--temp-dir", temp_dir]
    token_file = Path(temp_dir, "auth_token")
    env = dict(_without_ray_auth(os.environ), PATH=f"{VENV_BIN}:{os.environ['PATH']}")
    client_env = dict(env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
    sid = None
    try:
        up = run([script, "up", *args], env=env, timeout=300, cwd="/")
        assert up.returncode == 0, up.stdout + up.stderr
        assert (
            f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={token_file} ray job submit --address http://127.0.0.1:{port + 1}"
        ) in up.stdout
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text()
        assert len(token) == 64
        sid = int(Path(temp_dir, "yolov2-cluster.sid").read_text())
        status = run([script, "status", *args], env=env, timeout=120)
        assert status.returncode == 0 and status.stdout.startswith("up"), status.stdout + status.stderr
        for output in (
            up.stdout + up.stderr,
            status.stdout + status.stderr,
            *(p.read_text() for p in Path(temp_dir).glob("*-start.log")),
        ):
            assert token not in output

        probe = run([sys.executable, "-c", PROBE, f"127.0.0.1:{port}"], env=client_env, timeout=300)
        line = next((ln for ln in probe.stdout.splitlines() if ln.startswith("PROBE ")), None)
        assert line, probe.stdout + probe.stderr
        found = json.loads(line[len("PROBE ") :])
        alive = [n for n in found["nodes"] if n["alive"]]
        assert len(alive) == 2
        by_resource = {n["custom"][0]: n["id"] for n in alive if len(n["custom"]) == 1}
        assert set(by_resource) == {"node_head", "node_worker"}
        assert by_resource["node_head"] != by_resource["node_worker"]
        assert found["ran"] == by_resource, "a task pinned to a node's resource ran elsewhere"

        # The job server (dashboard) is on the head, on 127.0.0.1 only, and runs a driver that sees both nodes.
        assert listening_addresses(port + 1) == {"127.0.0.1"}
        submit = [
            str(VENV_BIN / "ray"),
            "job",
            "submit",
            "--address",
            f"http://127.0.0.1:{port + 1}",
            "--",
            "python",
            "-c",
            PROBE,
            f"127.0.0.1:{port}",
        ]
        job = run(submit, env=client_env, timeout=300)
        job_line = next((ln for ln in job.stdout.splitlines() if ln.startswith("PROBE ")), None)
        assert job.returncode == 0 and job_line, job.stdout + job.stderr
        job_found = json.loads(job_line[len("PROBE ") :])
        assert job_found["ran"] == by_resource
        assert job_found["cwd"] == str(REPO), "jobs start in the repository root"
        assert token not in job.stdout + job.stderr

        wrong = tmp_path / "wrong_token"
        wrong.write_text("0" * 64)
        wrong.chmod(0o600)
        refused = run(submit, env=dict(client_env, RAY_AUTH_TOKEN_PATH=str(wrong)), timeout=300)
        assert refused.returncode != 0 and "PROBE " not in refused.stdout
        assert "Authentication failed" in refused.stdout + refused.stderr, refused.stdout + refused.stderr
    finally:
        down = run([script, "down", *args], env=env, timeout=180)
    assert down.returncode == 0, down.stdout + down.stderr
    assert sid is not None and not session_processes(sid), "Ray processes of the cluster outlived `down`"
    leftovers = [pid for pid in all_pids() if any(f"{temp_dir}/session_" in part for part in cmdline(pid))]
    assert not leftovers
    after = run([script, "status", *args], env=env, timeout=60)
    assert after.returncode == 3 and after.stdout.startswith("down")
    # `down` stops only this cluster: the session's own local Ray instance still works.
    assert ray_local.get(ray_local.remote(lambda: 41 + 1).remote(), timeout=120) == 42
