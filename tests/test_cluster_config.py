"""ray_cluster.yaml: valid for Ray's own schema after Ray's own `prepare_config`, consistent with the
repository (scripts, file mounts, stage configs) and closed to the world except SSH from one address.

Nothing here talks to AWS: `prepare_config` / `validate_config` only read Ray's defaults file and
JSON schema, and the tests that run Ray's AWS bootstrap helpers do so with network access and
boto3 replaced by stubs that fail on use.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
import shlex
import socket
import stat
import subprocess
import sys
import types
from pathlib import Path

import jsonschema
import pytest
import yaml

from pipelines.config import load_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER_FILE = REPO / "ray_cluster.yaml"
CLUSTER_SCRIPTS = ["setup_node.sh", "mlflow_server.sh", "local_cluster.sh", "aws_security_group.sh"]
COMMAND_KEYS = [
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
]
# vCPUs and GPUs of the instance types this file may use, from AWS's instance type pages; the
# declared resources must agree with the hardware the autoscaler will actually get.
AWS_INSTANCE_HARDWARE = {
    "m5.xlarge": (4, 0),
    "m5.2xlarge": (8, 0),
    "m5.4xlarge": (16, 0),
    "g5.xlarge": (4, 1),
    "g5.2xlarge": (8, 1),
    "g5.4xlarge": (16, 1),
    "g5.12xlarge": (48, 4),
    "p3.2xlarge": (8, 1),
    "p3.8xlarge": (32, 4),
    "g6.xlarge": (4, 1),
    "g6.2xlarge": (8, 1),
}


@pytest.fixture()
def raw_config() -> dict:
    return yaml.safe_load(CLUSTER_FILE.read_text())


@pytest.fixture()
def no_network(monkeypatch):
    """Any attempt to open a network connection or to build a cloud node provider fails the test."""
    import ray.autoscaler._private.commands as commands
    import ray.autoscaler._private.providers as providers

    def refuse(*args, **kwargs):
        raise AssertionError(f"network or cloud access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(providers, "_get_node_provider", refuse)
    monkeypatch.setattr(commands, "_bootstrap_config", refuse)
    monkeypatch.setitem(providers._NODE_PROVIDERS, "aws", refuse)


@pytest.fixture()
def prepared(raw_config, no_network) -> dict:
    """Ray's own preparation (defaults merged, per-type worker bounds) and validation."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    before = set(sys.modules)
    config = prepare_config(copy.deepcopy(raw_config))
    validate_config(config)
    imported = set(sys.modules) - before
    cloud = sorted(m for m in imported if m.split(".")[0] in ("boto3", "botocore") or "._private.aws" in m)
    assert not cloud, f"prepare/validate imported cloud modules: {cloud}"
    return config


@pytest.fixture()
def ray_aws_config(monkeypatch):
    """Ray's AWS bootstrap module, imported with stub boto3/botocore whose clients fail on use
    (boto3 is not a dependency of this project; these tests must not reach AWS anyway)."""
    if importlib.util.find_spec("boto3") is None:

        def module(name: str, **attrs) -> types.ModuleType:
            m = types.ModuleType(name)
            m.__dict__.update(attrs)
            monkeypatch.setitem(sys.modules, name, m)
            return m

        class NoAws:
            def __init__(self, *args, **kwargs):
                raise AssertionError("AWS contacted")

        module("boto3", __version__="1.44.5", client=NoAws, resource=NoAws)
        module("boto3.exceptions", ResourceNotExistsError=type("ResourceNotExistsError", (Exception,), {}))
        module("boto3.resources")
        module("boto3.resources.base", ServiceResource=object)
        module("botocore")
        module("botocore.client", BaseClient=object)
        module("botocore.config", Config=NoAws)
        module("botocore.exceptions", ClientError=type("ClientError", (Exception,), {}))
    before = set(sys.modules)
    aws_config = importlib.import_module("ray.autoscaler._private.aws.config")
    yield aws_config
    for name in set(sys.modules) - before:  # do not leave modules bound to the stubs behind
        if name.startswith("ray.autoscaler._private.aws"):
            monkeypatch.delitem(sys.modules, name, raising=False)


def all_commands(config: dict) -> list[str]:
    return [cmd for key in COMMAND_KEYS for cmd in config.get(key) or []]


def gpu_node_types(config: dict) -> dict[str, dict]:
    return {
        name: nt
        for name, nt in config["available_node_types"].items()
        if AWS_INSTANCE_HARDWARE[nt["node_config"]["InstanceType"]][1] > 0
    }


# ---------------------------------------------------------------------------------------------
# Ray's schema
# ---------------------------------------------------------------------------------------------


def test_validates_against_ray_schema_after_prepare_config(prepared):
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(prepared, schema)  # what validate_config does, stated explicitly
    assert prepared["cluster_name"] == "yolov2"
    assert prepared["provider"]["type"] == "aws" and prepared["provider"]["region"] == "us-west-2"


def test_schema_validation_is_live(raw_config, no_network):
    """The same path rejects a broken file, so the test above can fail."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = copy.deepcopy(raw_config)
    broken["available_node_types"]["gpu_worker"]["max_workers"] = "eight"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))
    unknown = copy.deepcopy(raw_config)
    unknown["worker_nodes_typo"] = {}
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(unknown))


def test_prepare_config_keeps_every_command_list_ours(raw_config, prepared):
    """Ray fills missing lists from its defaults (which install a Ray nightly wheel and bind the
    dashboard to 0.0.0.0), so the file must set every one of them."""
    for key in COMMAND_KEYS:
        assert key in raw_config, f"ray_cluster.yaml must set {key} (else Ray's default applies)"
    assert prepared["head_start_ray_commands"] == raw_config["head_start_ray_commands"]
    assert prepared["worker_start_ray_commands"] == raw_config["worker_start_ray_commands"]
    # merge_setup_commands prepends setup_commands to the head/worker lists
    assert prepared["head_setup_commands"] == raw_config["setup_commands"] + raw_config["head_setup_commands"]
    assert prepared["worker_setup_commands"] == raw_config["setup_commands"] + raw_config["worker_setup_commands"]
    assert prepared["docker"] == {}, "the set-up script is the install path, not Ray's docker image"


# ---------------------------------------------------------------------------------------------
# Node types
# ---------------------------------------------------------------------------------------------


def test_node_types_are_consistent(prepared):
    node_types = prepared["available_node_types"]
    assert prepared["head_node_type"] in node_types
    for name, node_type in node_types.items():
        instance = node_type["node_config"].get("InstanceType")
        assert instance, f"node type {name} has no InstanceType"
        assert instance in AWS_INSTANCE_HARDWARE, f"{name}: add {instance}'s vCPUs/GPUs to the test's table"
        assert node_type["max_workers"] <= prepared["max_workers"]
    head = node_types[prepared["head_node_type"]]
    assert AWS_INSTANCE_HARDWARE[head["node_config"]["InstanceType"]][1] == 0, "the head is a CPU node"
    assert head["max_workers"] == 0
    gpus = gpu_node_types(prepared)
    assert gpus, "no GPU worker type"
    for name, node_type in gpus.items():
        cpus, gpu_count = AWS_INSTANCE_HARDWARE[node_type["node_config"]["InstanceType"]]
        # Declared, not autodetected: the autoscaler plans without EC2 calls (GCP never detects GPUs),
        # and the declaration must match the hardware.
        assert node_type["resources"].get("GPU") == gpu_count, name
        assert node_type["resources"].get("CPU") == cpus, name
        assert node_type["min_workers"] == 0, f"{name}: GPU nodes should scale from zero"
        assert node_type["max_workers"] >= 1


@pytest.mark.parametrize("config_name", ["voc.yaml", "coco.yaml"])
def test_gpu_stage_configs_fit_the_worker_nodes(prepared, config_name):
    """A train worker (train.cpus_per_worker CPUs + 1 GPU) and an evaluation actor must fit on
    one GPU node, and the cluster must be allowed enough of them."""
    cfg = load_config(REPO / "configs" / config_name)
    fits = [
        nt
        for nt in gpu_node_types(prepared).values()
        if nt["resources"]["CPU"] >= cfg.train.cpus_per_worker and nt["resources"]["GPU"] >= 1
    ]
    assert fits, f"{config_name}: no GPU node type has {cfg.train.cpus_per_worker} CPUs and a GPU"
    capacity = max(min(nt["max_workers"], prepared["max_workers"]) for nt in fits)
    assert cfg.train.use_gpu
    assert capacity >= cfg.train.num_workers, f"{config_name}: train.num_workers={cfg.train.num_workers}"
    gpus_available = max(min(nt["max_workers"], prepared["max_workers"]) * nt["resources"]["GPU"] for nt in fits)
    assert cfg.evaluate.gpus_per_actor <= max(nt["resources"]["GPU"] for nt in fits)
    assert cfg.evaluate.num_actors * cfg.evaluate.gpus_per_actor <= gpus_available


# ---------------------------------------------------------------------------------------------
# Files and commands
# ---------------------------------------------------------------------------------------------


def test_cluster_scripts_exist_and_are_executable():
    for name in CLUSTER_SCRIPTS:
        path = REPO / "cluster" / name
        assert path.is_file(), f"cluster/{name} is missing"
        assert path.stat().st_mode & stat.S_IXUSR, f"cluster/{name} is not executable"
        text = path.read_text()
        assert text.startswith("#!/usr/bin/env bash\n"), f"cluster/{name}: bash shebang"
        assert "set -euo pipefail" in text, f"cluster/{name}: set -euo pipefail"
    tracked = subprocess.run(["git", "ls-files", "-s", "cluster"], cwd=REPO, capture_output=True, text=True)
    if tracked.returncode == 0 and tracked.stdout.strip():
        modes = {line.split("\t")[1]: line.split()[0] for line in tracked.stdout.splitlines()}
        for name in CLUSTER_SCRIPTS:  # the executable bit must survive a fresh clone
            mode = modes.get(f"cluster/{name}")
            assert mode in (None, "100755"), f"cluster/{name} is committed without its executable bit"


def test_file_mounts_sources_exist_and_commands_use_synced_files(prepared):
    """`ray up` runs from the repository root; every path a command uses under a mount target is a
    file of the repository that the sync carries (the Ray token, from outside it: tested below)."""
    mounts = {t: s for t, s in prepared["file_mounts"].items() if s != CLUSTER_TOKEN_SOURCE}
    assert mounts, "the project must be synced to the nodes"
    for target, source in mounts.items():
        assert (REPO / source).exists(), f"file_mounts source {source} does not exist"
        assert target.startswith("/home/ubuntu/")
    used = []
    for cmd in all_commands(prepared):
        for target, source in mounts.items():
            for rel in re.findall(re.escape(target.rstrip("/")) + r"/([\w./-]+)", cmd):
                path = (REPO / source / rel).resolve()
                assert path.is_file(), f"command uses {target}/{rel}, not in the repository: {cmd}"
                used.append(path.relative_to(REPO).as_posix())
    assert "cluster/setup_node.sh" in used and "cluster/mlflow_server.sh" in used
    for key in ["head_setup_commands", "worker_setup_commands"]:
        assert any("cluster/setup_node.sh" in c for c in prepared[key]), f"{key} must run setup_node.sh"
    excluded = set(prepared["rsync_exclude"])
    assert {".venv", "workspace", ".git"} <= excluded, "the local venv, workspace and .git must not be uploaded"


def _ray_start(commands: list[str], head: bool) -> list[str]:
    found = []
    for cmd in commands:
        for part in cmd.split(";"):
            words = shlex.split(part.strip()) if part.strip() else []
            if words[:2] == ["ray", "start"]:
                found.append(words)
    assert len(found) == 1, f"expected one `ray start` in {commands}"
    assert ("--head" in found[0]) == head
    return found[0]


# The cluster's Ray token file on the user's machine (`make cluster-token`), as file_mounts names it.
CLUSTER_TOKEN_SOURCE = "~/.yolov2-pipeline/cluster_auth_token"
NODE_HOME = "/home/ubuntu"


@pytest.mark.security
def test_every_node_starts_ray_with_token_auth_and_the_synced_token_file(prepared):
    """Every `ray start` (head and workers) runs with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH naming the token
    file that file_mounts copy from the user's machine, and setup_node.sh's shells (drivers under `ray submit`,
    `ray job submit` and `ray status` on the head) default to that same file."""
    token_targets = [t for t, s in prepared["file_mounts"].items() if s == CLUSTER_TOKEN_SOURCE]
    assert len(token_targets) == 1, prepared["file_mounts"]
    target = token_targets[0]
    assert target == CLUSTER_TOKEN_SOURCE.replace("~", NODE_HOME, 1), "the same path on the nodes"
    for key in ["head_start_ray_commands", "worker_start_ray_commands"]:
        start = next(c for c in prepared[key] if "ray start" in c)
        match = re.search(r"export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=(\S+);", start)
        assert match, f"{key} must export RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH before ray start"
        assert match.start() < start.index("ray start") and match.group(1) == target
    setup_script = (REPO / "cluster" / "setup_node.sh").read_text()
    assert f'ray_token_file="$HOME/{CLUSTER_TOKEN_SOURCE[2:]}"' in setup_script, "setup_node.sh's default"
    assert "\nray_auth=token\n" in setup_script
    for cmd in all_commands(prepared):
        assert "--ray-auth" not in cmd and "RAY_AUTH_MODE=disabled" not in cmd, cmd


@pytest.mark.security
def test_the_token_is_made_locally_once_and_never_put_in_a_command_or_the_project_sync(prepared):
    """`make cluster-token` makes the file the mount copies (pipelines/ray_auth.py: 0600, never printed); no
    command carries the token itself (Ray's launcher prints its commands) or prints it (`ray get-auth-token`);
    the file lies outside the repository, so the project's sync never carries it."""
    from pipelines import ray_auth

    makefile = (REPO / "Makefile").read_text()
    assert f"CLUSTER_TOKEN := $(HOME)/{CLUSTER_TOKEN_SOURCE[2:]}\n" in makefile
    assert "\t$(PYTHON) -m pipelines.ray_auth token-file $(CLUSTER_TOKEN)\n" in makefile
    assert ray_auth.cluster_token_path() == Path(os.path.expanduser(CLUSTER_TOKEN_SOURCE))
    for cmd in all_commands(prepared):
        assert "RAY_AUTH_TOKEN=" not in cmd and "get-auth-token" not in cmd, cmd
    assert not Path(os.path.expanduser(CLUSTER_TOKEN_SOURCE)).resolve().is_relative_to(REPO)


@pytest.mark.security
def test_dashboard_and_mlflow_listen_on_loopback(prepared):
    head_start = _ray_start(prepared["head_start_ray_commands"], head=True)
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "--include-dashboard=true" in head_start, "`ray job submit` and `ray dashboard` need it"
    _ray_start(prepared["worker_start_ray_commands"], head=False)
    mlflow = [c for c in all_commands(prepared) if "mlflow_server.sh" in c]
    assert len(mlflow) == 1
    words = shlex.split(mlflow[0].split("nohup", 1)[1])
    assert words[words.index("--host") + 1] == "127.0.0.1"
    # The only other address is the head's private IP (for the workers), taken from the node itself.
    also = [words[i + 1] for i, w in enumerate(words) if w == "--also-bind"]
    assert also == ["$HEAD_IP"] and "HEAD_IP=$(hostname -I" in mlflow[0]
    assert "nohup" in mlflow[0] and mlflow[0].rstrip().endswith("&")
    for cmd in all_commands(prepared):
        assert "0.0.0.0" not in cmd, f"a command binds all interfaces: {cmd}"


# ---------------------------------------------------------------------------------------------
# Security group: SSH from one address, nothing else from outside
# ---------------------------------------------------------------------------------------------


def test_ray_would_open_ssh_to_the_world_in_a_group_it_creates(ray_aws_config):
    """Why the file does not use provider.security_group: Ray adds 22/tcp from 0.0.0.0/0 to the
    rules of any group it creates, next to the user's IpPermissions."""
    ours = [{"FromPort": 22, "ToPort": 22, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "203.0.113.7/32"}]}]
    rules = ray_aws_config._create_default_inbound_rules({"sg-1"}, ours)
    world = [r for r in rules if any(ip.get("CidrIp") == "0.0.0.0/0" for ip in r.get("IpRanges", []))]
    assert world, "Ray no longer adds a world-open SSH rule: provider.security_group could be used again"


@pytest.mark.security
def test_every_node_names_its_security_group_so_ray_creates_none(raw_config, prepared, ray_aws_config, monkeypatch):
    assert "security_group" not in raw_config["provider"], "Ray would create the group with 0.0.0.0/0:22"
    groups = [tuple(nt["node_config"].get("SecurityGroupIds", ())) for nt in prepared["available_node_types"].values()]
    assert all(groups) and len(set(groups)) == 1, "every node type must name the same security group"
    assert all(g.startswith("sg-") for g in groups[0])

    def refuse(*args, **kwargs):
        raise AssertionError("Ray would create or change a security group")

    monkeypatch.setattr(ray_aws_config, "_upsert_security_groups", refuse)
    monkeypatch.setattr(ray_aws_config, "_get_or_create_vpc_security_groups", refuse)
    config = copy.deepcopy(prepared)
    assert ray_aws_config._configure_security_group(config) == prepared


def _fake_aws(tmp_path: Path) -> tuple[dict, Path]:
    """An `aws` executable that records its arguments and answers like the EC2 API would."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "aws_calls.jsonl"
    fake = bin_dir / "aws"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "args = sys.argv[1:]\n"
        "if args[:2] == ['ec2', 'describe-vpcs']: print('vpc-0fake')\n"
        "elif args[:2] == ['ec2', 'describe-security-groups']: print('None')\n"
        "elif args[:2] == ['ec2', 'create-security-group']: print('sg-0fake123')\n"
        "elif args[:2] == ['ec2', 'authorize-security-group-ingress']: print('{}')\n"
        "else: sys.exit('unexpected aws call: ' + ' '.join(args))\n"
    )
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    return env, log


@pytest.mark.security
def test_security_group_script_opens_only_ssh_from_one_address(tmp_path):
    env, log = _fake_aws(tmp_path)
    result = subprocess.run(
        [str(REPO / "cluster" / "aws_security_group.sh"), "--my-ip", "203.0.113.7"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "sg-0fake123"
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    ingress = [c for c in calls if c[:2] == ["ec2", "authorize-security-group-ingress"]]
    assert len(ingress) == 2
    permissions = [c[c.index("--ip-permissions") + 1] for c in ingress]
    assert all(c[c.index("--group-id") + 1] == "sg-0fake123" for c in ingress)
    ssh = [p for p in permissions if "IpRanges" in p]
    members = [p for p in permissions if "UserIdGroupPairs" in p]
    assert len(ssh) == 1 and len(members) == 1
    assert ssh[0].startswith("IpProtocol=tcp,FromPort=22,ToPort=22,")
    assert re.findall(r"CidrIp=([\d./]+)", ssh[0]) == ["203.0.113.7/32"]
    assert members[0].startswith("IpProtocol=-1,") and "GroupId=sg-0fake123" in members[0]
    assert "IpRanges" not in members[0] and "CidrIp" not in members[0]
    assert not any("0.0.0.0" in " ".join(c) for c in calls)
    assert [c[:2] for c in calls if c[1] not in ("authorize-security-group-ingress",)] == [
        ["ec2", "describe-vpcs"],
        ["ec2", "describe-security-groups"],
        ["ec2", "create-security-group"],
    ]


@pytest.mark.security
@pytest.mark.parametrize("bad_ip", ["0.0.0.0", "203.0.113.0/24", "0.0.0.0/0", "300.1.1.1", "example.com"])
def test_security_group_script_refuses_anything_but_one_address(tmp_path, bad_ip):
    env, log = _fake_aws(tmp_path)
    result = subprocess.run(
        [str(REPO / "cluster" / "aws_security_group.sh"), "--my-ip", bad_ip],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--my-ip" in result.stderr
    assert not log.exists(), "no AWS call may be made with a bad address"
