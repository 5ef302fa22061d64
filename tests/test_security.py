"""Security items of the pipeline, one test (or group) each.

- Deserialisation: every ``torch.load`` in the repository passes ``weights_only=True`` and YAML is read
  with ``yaml.safe_load`` only (an AST scan of every Python file, with its own positive controls);
  a checkpoint carrying a pickled object that would write a file is refused by ``load_checkpoint`` and
  ``load_model_file`` and the file is not written (the control: an unsafe load does write it).
- Archive extraction: absolute paths, ``..`` and symlinks out of the target are covered by
  tests/data/test_download.py (``test_extract_refuses_unsafe_tar_members`` / ``..._zip_members``);
  here what those leave out: hard links out, device files, setuid bits, a link already in the target.
- Services: the MLflow server binds 127.0.0.1 unless told otherwise (tests/test_cluster_scripts.py
  checks it at the socket: ``test_mlflow_server_answers_on_loopback_only_and_uses_the_workspace_store``);
  a local Ray started by ``pipelines/ray_runtime.py`` has its dashboard on 127.0.0.1 and token authentication
  (its core ports listen on every interface): on a real instance, the GCS and the job API refuse a client
  without the token or with a wrong one, and a driver with a wrong token is told how to pass the right one.
  The token file's rules and RAY_AUTH_MODE=disabled: tests/pipelines/test_ray_auth.py.
- Secrets: ``tracking.safe_params`` drops secret-looking names and masks URL passwords; a pipeline run
  with cloud keys and the Ray token in the environment and a password in a config URL logs none of them
  (params, tags, metrics, artifacts, every file of the workspace, summary.json, stdout/stderr).
- ``ray_cluster.yaml``: no port open to the world but SSH from the user's address; covered by
  tests/test_cluster_config.py (named below and checked to still exist).
"""

from __future__ import annotations

import ast
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest
import torch

from yolov2.errors import DatasetError, WeightsError

pytestmark = pytest.mark.security  # benchmarks/reliability.py can count these checks by marker

REPO = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".venv", ".git", "__pycache__", "build", "dist", "workspace", "node_modules", ".eggs"}


def repo_python_files() -> list[Path]:
    out = []
    for path in REPO.rglob("*.py"):
        parts = set(path.relative_to(REPO).parts)
        if not parts & SKIP_DIRS and not any(p.endswith(".egg-info") for p in parts):
            out.append(path)
    return sorted(out)


# ---------------------------------------------------------------------------------------------
# Deserialisation: torch.load(weights_only=True), yaml.safe_load


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


UNSAFE_YAML = {"load", "unsafe_load", "full_load", "load_all", "unsafe_load_all", "full_load_all"}
DELIBERATE = "# deliberately unsafe: security test control"  # allowed in this file only (checked below)


def unsafe_loads(source: str, filename: str = "<src>") -> list[str]:
    """Calls that can run code while loading: torch.load without weights_only=True, yaml.load & co,
    any Loader= argument; also what ``from torch/yaml import ...`` brings in under another name."""
    tree = ast.parse(source, filename)
    lines = source.splitlines()
    aliases: dict[str, str] = {}  # local name -> dotted origin, for `from torch import load as x`
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization", "yaml"):
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        name = aliases.get(name, name)
        where = f"{filename}:{node.lineno}"
        if DELIBERATE in lines[node.lineno - 1] and filename == "tests/test_security.py":
            continue
        keywords = {k.arg: k.value for k in node.keywords}
        if name in ("torch.load", "torch.serialization.load"):
            flag = keywords.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append(f"{where}: {name}(...) without weights_only=True")
        if name.startswith("yaml.") and name.split(".", 1)[1] in UNSAFE_YAML:
            found.append(f"{where}: {name}(...) (use yaml.safe_load)")
        if "Loader" in keywords:
            found.append(f"{where}: Loader= argument (use yaml.safe_load)")
    return found


def test_the_scanner_finds_what_it_must():
    bad = [
        "import torch\ntorch.load(f)",
        "import torch\ntorch.load(f, weights_only=False)",
        "import torch\ntorch.load(f, map_location='cpu', weights_only=flag)",
        "from torch import load\nload(f)",
        "from torch import load as tl\ntl(f)",
        "import yaml\nyaml.load(s)",
        "import yaml\nyaml.load(s, Loader=yaml.SafeLoader)",
        "import yaml\nyaml.unsafe_load(s)",
        "import yaml\nyaml.full_load(s)",
        "from yaml import unsafe_load\nunsafe_load(s)",
        "import yaml\nyaml.load_all(s, Loader=yaml.FullLoader)",
    ]
    for src in bad:
        assert unsafe_loads(src), src
    assert unsafe_loads(f"import torch\ntorch.load(f)  {DELIBERATE}", "yolov2/x.py"), "allowed in this file only"
    good = [
        "import torch\ntorch.load(f, weights_only=True)",
        "import yaml\nyaml.safe_load(s)",
        "import yaml\nyaml.safe_dump(d)",
        '"""torch.load(f) in a docstring is not a call"""',
    ]
    for src in good:
        assert unsafe_loads(src) == [], src


def test_every_python_file_loads_weights_and_yaml_safely():
    files = repo_python_files()
    assert len(files) > 50 and REPO / "yolov2" / "engine" / "checkpoint.py" in files
    found = [hit for f in files for hit in unsafe_loads(f.read_text(encoding="utf-8"), str(f.relative_to(REPO)))]
    assert found == [], "\n".join(found)


class _WritesFileWhenUnpickled:
    """A pickled object whose loading opens (creates) ``path``: what a hostile checkpoint could do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_checkpoint_with_a_pickled_object_is_refused_and_runs_nothing(tmp_path):
    from yolov2.engine.checkpoint import load_checkpoint
    from yolov2.inference import MODEL_FORMAT, load_model_file

    marker = tmp_path / "pwned.txt"
    hostile = tmp_path / "model.pt"
    payload = _WritesFileWhenUnpickled(str(marker))
    torch.save(
        {
            "format": MODEL_FORMAT,
            "version": 1,
            "spec": {"name": "yolov2_tiny_voc", "num_classes": 20, "anchors": [[1.0, 1.0]]},
            "state_dict": {"w": torch.zeros(2)},
            "extra": payload,
        },
        hostile,
    )
    with pytest.raises(WeightsError, match="model.pt: not a safe checkpoint"):
        load_checkpoint(hostile)
    assert not marker.exists()
    with pytest.raises(WeightsError, match="model.pt"):
        load_model_file(hostile)
    assert not marker.exists()
    # The control: the same file loaded without weights_only does run the payload.
    handle = torch.load(hostile, weights_only=False)["extra"]  # deliberately unsafe: security test control
    handle.close()
    assert marker.exists(), "the payload is live, so the refusals above are meaningful"


# ---------------------------------------------------------------------------------------------
# Archive extraction (absolute paths, '..', symlinks: tests/data/test_download.py)


def _tar_with(path: Path, info: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w") as tar:
        ok = tarfile.TarInfo("ok.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        info.size = len(data) if info.isreg() else 0
        tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.LNKTYPE, target
    return info


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize(
    "make",
    [
        lambda: _link("hard_abs", "/etc/passwd"),
        lambda: _link("hard_up", "../../outside.txt"),
        lambda: _device("dev"),
        lambda: _fifo("fifo"),
    ],
    ids=["hardlink_absolute", "hardlink_escaping", "char_device", "fifo"],
)
def test_extract_refuses_hard_links_out_and_special_files(tmp_path, make):
    from yolov2.data.download import extract

    (tmp_path / "outside.txt").write_text("secret")
    archive = _tar_with(tmp_path / "evil.tar", make())
    dest = tmp_path / "sandbox" / "out"
    dest.mkdir(parents=True)
    before = _files(tmp_path)
    with pytest.raises(DatasetError, match="evil.tar: refusing to extract member"):
        extract(archive, dest)
    assert _files(tmp_path) == before, "nothing may be written anywhere"


def _device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3  # /dev/null's numbers
    return info


def _fifo(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.FIFOTYPE
    return info


def test_extract_drops_setuid_bits(tmp_path):
    from yolov2.data.download import extract

    info = tarfile.TarInfo("tool")
    info.mode = 0o4777 | stat.S_ISGID
    archive = _tar_with(tmp_path / "suid.tar", info, b"#!/bin/sh\n")
    extract(archive, tmp_path / "out")
    mode = (tmp_path / "out" / "tool").stat().st_mode
    assert not mode & (stat.S_ISUID | stat.S_ISGID) and not mode & stat.S_IWOTH


def test_extract_does_not_write_through_a_link_already_in_the_target(tmp_path):
    from yolov2.data.download import extract

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest = tmp_path / "out"
    dest.mkdir()
    os.symlink(elsewhere, dest / "VOCdevkit")  # planted before the archive arrives
    with tarfile.open(tmp_path / "voc.tar", "w") as tar:
        info = tarfile.TarInfo("VOCdevkit/evil.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(DatasetError, match="VOCdevkit"):
        extract(tmp_path / "voc.tar", dest)
    assert list(elsewhere.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Services bind loopback (MLflow: tests/test_cluster_scripts.py, at the socket)


def test_mlflow_server_defaults_to_loopback():
    """The script's default, read from its text; the live socket check is in tests/test_cluster_scripts.py."""
    script = (REPO / "cluster" / "mlflow_server.sh").read_text()
    assert '\nhost="127.0.0.1"\n' in script
    scripts_test = (REPO / "tests" / "test_cluster_scripts.py").read_text()
    assert "def test_mlflow_server_answers_on_loopback_only_and_uses_the_workspace_store" in scripts_test


def test_local_ray_dashboard_listens_on_loopback_only(monkeypatch, tmp_path):
    """connect() with no address and no cluster to join starts a local instance whose dashboard (if any) binds
    127.0.0.1, with token authentication and this project's token file; ray.init is replaced, so nothing starts."""
    import ray

    from pipelines import ray_auth, ray_runtime

    calls = []

    def fake_init(**kwargs):
        calls.append({**kwargs, "auth": (os.environ.get("RAY_AUTH_MODE"), os.environ.get("RAY_AUTH_TOKEN_PATH"))})
        if kwargs.get("address") == "auto":
            raise ConnectionError("no running cluster")

    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)  # also restores what connect() sets, after the test
    monkeypatch.setattr(ray_auth, "_reload_ray_auth", lambda: None)  # this process's Ray may be in use
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    ray_runtime.connect(None, 2)
    local = [c for c in calls if not c.get("address")]  # the call that may start a local instance
    assert local, calls
    assert local[0].get("include_dashboard") is False or local[0].get("dashboard_host") == "127.0.0.1", calls
    assert local[0]["auth"] == ("token", str(tmp_path / ".yolov2-pipeline" / "ray_auth_token")), calls


# A local Ray instance started by ray_runtime.connect() in a fresh process, as `make demo` starts it. It prints
# what it exposes (one "PROBE {json}" line), then stays up until its stdin is closed.
_LOCAL_RAY_PROBE = r"""
import ipaddress, json, os, sys
from pathlib import Path
import ray
from pipelines import ray_runtime
real_init = ray.init
def init(**kwargs):
    if kwargs.get("address") == "auto":  # never join another cluster running on this machine
        raise ConnectionError("test: no running cluster")
    return real_init(**kwargs)
ray.init = init
ray_runtime.connect(None, 1)
node = ray._private.worker.global_worker.node
session = node.get_session_dir_path()
pids = {os.getpid()}
for d in Path("/proc").iterdir():
    try:
        if d.name.isdigit() and session.encode() in (d / "cmdline").read_bytes():
            pids.add(int(d.name))
    except OSError:
        pass
inodes = set()
for pid in pids:
    try:
        for fd in (Path("/proc") / str(pid) / "fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
listening = set()
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    for line in Path(table).read_text().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A" and f[9] in inodes:
            raw = bytes.fromhex(f[1].split(":")[0])
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            listening.add(str(ipaddress.ip_address(words)))
print("PROBE " + json.dumps({"webui_url": node.address_info.get("webui_url") or "", "listening": sorted(listening),
                  "gcs_address": node.gcs_address, "session_dir": session,
                  "auth_mode": os.environ.get("RAY_AUTH_MODE", ""),
                  "token_path": os.environ.get("RAY_AUTH_TOKEN_PATH", "")}), flush=True)
sys.stdin.read()
ray.shutdown()
"""


def _read_probe_line(proc: subprocess.Popen, timeout: float) -> dict:
    """The probe's "PROBE {json}" line, or a failure with what it printed if it ends or takes too long."""
    import select

    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 1.0)[0]:
            line = proc.stdout.readline()
            if line.startswith("PROBE "):
                return json.loads(line[len("PROBE ") :])
            seen.append(line)
            if not line and proc.poll() is not None:
                break
    raise AssertionError(f"the Ray probe gave no PROBE line (exit {proc.poll()}): {''.join(seen)[-3000:]}")


@pytest.fixture(scope="module")
def local_ray_probe(tmp_path_factory):
    """A real local Ray instance started by ray_runtime.connect() in a fresh process with no Ray settings in its
    environment and its own (empty) home folder, kept up while this module's tests probe it from outside."""
    home = tmp_path_factory.mktemp("home")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    }
    env["HOME"] = str(home)
    output = home / "probe-output.txt"
    with open(output, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _LOCAL_RAY_PROBE],
            cwd=REPO,
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
        )
    try:
        probe = _read_probe_line(proc, timeout=240)
        yield {**probe, "home": home, "output": output}
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=30)


def test_real_local_ray_dashboard_is_on_loopback(local_ray_probe):
    """The dashboard (it serves the state API Ray Train polls) answers on 127.0.0.1 only."""
    assert local_ray_probe["webui_url"].startswith("127.0.0.1:"), local_ray_probe
    assert local_ray_probe["listening"], "the probe found the instance's sockets"


def _token(probe: dict) -> str:
    return Path(probe["token_path"]).read_text()


def test_local_ray_runs_token_auth_with_a_private_token_file_it_never_prints(local_ray_probe):
    """Ray's core ports listen on every interface (Ray has no loopback-only option), so the instance must ask
    every client for its token: RAY_AUTH_MODE=token, the token in ~/.yolov2-pipeline/ray_auth_token (0600, folder
    0700), made on first use; neither the driver's output nor Ray's logs print it."""
    token_file = local_ray_probe["home"] / ".yolov2-pipeline" / "ray_auth_token"
    assert local_ray_probe["auth_mode"] == "token" and local_ray_probe["token_path"] == str(token_file)
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    token = _token(local_ray_probe)
    assert len(token) == 64 and int(token, 16) >= 0, "256 random bits, hex"
    assert token not in local_ray_probe["output"].read_text()
    logs = list(Path(local_ray_probe["session_dir"], "logs").glob("*"))
    assert logs, "Ray's logs of the instance were found"
    for log_file in logs:
        if log_file.is_file():
            assert token.encode() not in log_file.read_bytes(), f"{log_file} holds the token"


def _gcs_call(address: str, method: str, token: str | None):
    """One gRPC call to the GCS, as any client on the network could make it; (status code name, reply)."""
    import grpc
    from ray.core.generated import gcs_service_pb2 as pb
    from ray.core.generated import gcs_service_pb2_grpc as pb_grpc

    metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
    with grpc.insecure_channel(address) as channel:
        stubs = {
            "GetClusterId": (pb_grpc.NodeInfoGcsServiceStub, pb.GetClusterIdRequest),
            "GetAllNodeInfo": (pb_grpc.NodeInfoGcsServiceStub, pb.GetAllNodeInfoRequest),
            "GetAllJobInfo": (pb_grpc.JobInfoGcsServiceStub, pb.GetAllJobInfoRequest),
        }
        stub, request = stubs[method]
        try:
            return "OK", getattr(stub(channel), method)(request(), metadata=metadata, timeout=30)
        except grpc.RpcError as e:
            return e.code().name, e.details()


WRONG_TOKEN = "0" * 64


@pytest.mark.parametrize("method", ["GetClusterId", "GetAllNodeInfo", "GetAllJobInfo"])
def test_local_ray_gcs_refuses_clients_without_the_right_token(local_ray_probe, method):
    """The GCS (its port listens on every interface) answers no call without the token or with a wrong one;
    the control: the same call with the token is answered."""
    address = local_ray_probe["gcs_address"]
    for token in (None, WRONG_TOKEN, _token(local_ray_probe)[:-1] + "x"):
        code, details = _gcs_call(address, method, token)
        assert code == "UNAUTHENTICATED", (token, code, details)
    code, reply = _gcs_call(address, method, _token(local_ray_probe))
    assert code == "OK", reply


def _http(url: str, token: str | None, body: dict | None = None) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_local_ray_job_api_refuses_clients_without_the_right_token(local_ray_probe, tmp_path):
    """The job API (`ray job submit`'s endpoint, in the dashboard) refuses a submission without the token (401)
    or with a wrong one (403), and runs nothing; the control: with the token it answers, and lists no such job."""
    base = f"http://{local_ray_probe['webui_url']}"
    marker = tmp_path / "pwned"
    job = {"entrypoint": f"touch {marker}", "submission_id": f"attack-{uuid.uuid4().hex[:8]}"}
    assert _http(f"{base}/api/jobs/", None, job)[0] == 401
    assert _http(f"{base}/api/jobs/", WRONG_TOKEN, job)[0] == 403
    assert _http(f"{base}/api/version", None)[0] == 401, "the whole dashboard asks for the token"
    status, listing = _http(f"{base}/api/jobs/", _token(local_ray_probe))
    assert status == 200
    assert job["submission_id"] not in listing and not marker.exists()


def test_a_driver_with_a_wrong_token_is_refused_and_told_how_to_pass_the_right_one(local_ray_probe, tmp_path):
    """full.py joining the instance with a wrong token file: exit 2, no traceback, and a message naming the file
    it presented and how to pass the cluster's (RAY_gcs_server_port_wait_time_s: Ray's retries cut to 2 s)."""
    wrong = tmp_path / "wrong_token"
    wrong.write_text(WRONG_TOKEN)
    wrong.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(wrong), RAY_gcs_server_port_wait_time_s="2")
    address = local_ray_probe["gcs_address"]
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "pipelines" / "full.py"),
            "--config",
            "configs/demo.yaml",
            "--workspace",
            str(tmp_path / "ws"),
            "--no-mlflow",
            "--set",
            f"ray.address={address}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert (
        f"Ray at {address} refused this driver's authentication; it presented the token file {wrong}" in proc.stderr
    ), proc.stderr[-3000:]
    assert "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=<the cluster's token file>" in proc.stderr
    assert _token(local_ray_probe) not in proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------
# Secrets are never logged or printed


def test_safe_params_drops_secret_names_and_masks_url_passwords():
    from pipelines.tracking import safe_params

    params = {
        "aws_secret_access_key": "x",
        "AWS_ACCESS_KEY_ID": "x",
        "hf_token": "x",
        "db.password": "x",
        "service.passwd": "x",
        "openai_api_key": "x",
        "api-key": "x",
        "gcp.credentials_file": "x",
        "train.lr": 0.001,
        "data.root": "/data/voc",
        "train.epochs": 3,
        "mlflow.tracking_uri": "postgresql://mlflow:hunter2@db:5432/mlflow",
        "ray.address": "ray://admin:s3cr3t@head:10001",
        "data.url": "https://example.com/a@b",
        "long": "v" * 7000,
    }
    out = safe_params(params)
    assert set(out) == {
        "train.lr",
        "data.root",
        "train.epochs",
        "mlflow.tracking_uri",
        "ray.address",
        "data.url",
        "long",
    }
    assert out["train.lr"] == "0.001" and out["train.epochs"] == "3" and out["data.root"] == "/data/voc"
    assert out["mlflow.tracking_uri"] == "postgresql://mlflow:***@db:5432/mlflow"
    assert out["ray.address"] == "ray://admin:***@head:10001"
    assert out["data.url"] == "https://example.com/a@b"  # no user info: unchanged
    assert len(out["long"]) == 6000 and out["long"].endswith("...")


def _tiny_voc(root: Path) -> Path:
    """Two images, one truncated: the shard stage then logs a rejects.txt artifact too."""
    from PIL import Image

    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / d).mkdir(parents=True)
    for i in ("a", "b"):
        buf = io.BytesIO()
        Image.new("RGB", (64, 48), (90, 40, 10)).save(buf, "JPEG")
        data = buf.getvalue() if i == "a" else buf.getvalue()[:300]
        (root / "JPEGImages" / f"{i}.jpg").write_bytes(data)
        (root / "Annotations" / f"{i}.xml").write_text(
            f"<annotation><filename>{i}.jpg</filename><size><width>64</width><height>48</height></size>"
            "<object><name>dog</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>30</xmax><ymax>30</ymax></bndbox>"
            "</object></annotation>"
        )
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\nb\n")
    return root


def test_secrets_in_the_environment_and_config_never_reach_mlflow_or_the_console(
    ray_local, ray_token_file, tmp_path, monkeypatch, capfd
):
    """full.py (prepare + shard, MLflow on, SQLite in the workspace) with cloud keys in the environment, a
    password inside a config URL and the Ray token of the instance it runs on (its file named by
    RAY_AUTH_TOKEN_PATH, and the token itself in RAY_AUTH_TOKEN): no param, tag, metric, artifact, workspace file
    (summary.json included) or console line holds any of them."""
    import mlflow
    import yaml
    from mlflow.tracking import MlflowClient

    from pipelines import full

    secret = f"supersecret-{uuid.uuid4().hex}"
    for name in (
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "MLFLOW_TRACKING_PASSWORD",
        "GITHUB_TOKEN",
        "HF_TOKEN",
        "DATABASE_URL",
    ):
        monkeypatch.setenv(name, f"{secret}-{name}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA" + secret)
    ray_token = ray_token_file.read_text()
    assert len(ray_token) == 64 and os.environ["RAY_AUTH_TOKEN_PATH"] == str(ray_token_file)
    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_token)  # the same token: Ray would take it from here first
    previous_uri = mlflow.get_tracking_uri()
    ws = tmp_path / "ws"
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "workspace": str(ws),
                "data": {
                    "kind": "voc",
                    "root": str(_tiny_voc(tmp_path / "voc")),
                    "splits": {"train": ["train"]},
                    "class_names": ["dog"],
                },
                "mlflow": {"experiment": "security"},
                "ray": {"address": f"ray://admin:{secret}@head:10001"},  # Ray is already up: connect() is a no-op
            }
        )
    )
    try:
        code = full.main(["--config", str(config), "--stages", "prepare,shard", "--log-level", "DEBUG"])
    finally:
        mlflow.set_tracking_uri(previous_uri)
    captured = capfd.readouterr()
    assert code == 0, captured.err[-3000:]

    client = MlflowClient(tracking_uri=f"sqlite:///{ws / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("security")
    runs = client.search_runs([experiment.experiment_id])
    assert {r.info.run_name for r in runs} == {"pipeline", "prepare", "shard"}
    logged = []
    artifacts = 0
    for run in runs:
        logged += [f"param {k}={v}" for k, v in run.data.params.items()]
        logged += [f"tag {k}={v}" for k, v in run.data.tags.items()]
        logged += [f"metric {k}" for k in run.data.metrics]
        for path in _artifact_paths(client, run.info.run_id):
            local = client.download_artifacts(run.info.run_id, path, str(tmp_path / "dl" / run.info.run_id))
            logged.append(f"artifact {path}: " + Path(local).read_bytes().decode("utf-8", "replace"))
            artifacts += 1
    assert artifacts >= 1, "the shard run logs rejects.txt: the artifact check is live"
    pipeline = next(r for r in runs if r.info.run_name == "pipeline")
    assert pipeline.data.params["ray.address"] == "ray://admin:***@head:10001"  # masked, not dropped
    leaks = [line for line in logged if secret in line or ray_token in line]
    assert leaks == [], leaks
    assert (ws / "summary.json").is_file()
    for path in ws.rglob("*"):  # the SQLite store, artifacts, manifests, Parquet, summary.json
        if path.is_file():
            data = path.read_bytes()
            assert secret.encode() not in data and ray_token.encode() not in data, f"{path} holds a secret"
    for text in (captured.out, captured.err):
        assert secret not in text and ray_token not in text


def _artifact_paths(client, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path):
        out += _artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return out


# ---------------------------------------------------------------------------------------------
# ray_cluster.yaml: SSH from the user's address only (tests/test_cluster_config.py)


def test_cluster_network_rules_are_tested_in_test_cluster_config():
    """The cluster file's network rules are tested against Ray's own AWS config code there; make sure
    those tests stay: no Ray-created (world-open) group, SSH from one address, loopback services."""
    source = (REPO / "tests" / "test_cluster_config.py").read_text()
    names = {n.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef)}
    assert {
        "test_every_node_names_its_security_group_so_ray_creates_none",
        "test_security_group_script_opens_only_ssh_from_one_address",
        "test_security_group_script_refuses_anything_but_one_address",
        "test_dashboard_and_mlflow_listen_on_loopback",
    } <= names
