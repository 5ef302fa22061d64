#!/usr/bin/env bash
# Install this project, with the pins in its pyproject.toml, on a cluster node (or any Linux box):
# a Python 3.11 virtual environment, `pip install -e <project>`, and a small ~/.bashrc block that
# activates it, so `ray`, `python` and `mlflow` in the commands Ray's cluster launcher runs over SSH
# are this project's. Safe to run again: an unchanged pyproject.toml skips the install.
#
#   bash ~/yolov2-pipeline/cluster/setup_node.sh                       # what ray_cluster.yaml runs
#   bash cluster/setup_node.sh --extra 'boto3==1.44.5'                 # head node: AWS autoscaler, S3
#   bash cluster/setup_node.sh --venv /opt/yolov2-venv --no-bashrc
#
# The ~/.bashrc block also gives every shell the cluster's Ray token authentication: RAY_AUTH_MODE=token
# and RAY_AUTH_TOKEN_PATH, the token file that ray_cluster.yaml's file_mounts copy to every node.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: cluster/setup_node.sh [options]

Create (or reuse) a Python 3.11 venv and install the project into it with `pip install -e`.

Options:
  --project DIR    the project checkout (default: the folder above this script)
  --venv DIR       the virtual environment (default: <project>/.venv)
  --python BIN     Python 3.11 interpreter to create the venv with (default: python3.11 on PATH;
                   when missing, installed with apt-get: Debian/Ubuntu's python3.11, else the
                   deadsnakes PPA on Ubuntu)
  --extra SPEC     one more pip requirement to install, e.g. 'boto3==1.44.5' (repeatable)
  --bashrc FILE    the shell start-up file to add the activation block to (default: ~/.bashrc)
  --no-bashrc      do not touch any shell start-up file
  --ray-token-file FILE
                   the cluster's Ray token file (default: ~/.yolov2-pipeline/cluster_auth_token,
                   where ray_cluster.yaml's file_mounts put it); it must exist, and is set to mode 0600
  --ray-auth MODE  token (default) or disabled: Ray without authentication, which anyone who can
                   reach the cluster's ports can use to run code (the script warns)
  --force          reinstall even if nothing changed since the last run
  -h, --help       show this help

The ~/.bashrc block (between "# >>> yolov2-pipeline >>>" and "# <<< yolov2-pipeline <<<",
rewritten on every run) exports RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH=<token file> (so
`ray start`, drivers, `ray job submit` and `ray status` present the cluster's token), activates the
venv and, for a shell that starts in $HOME, changes to the project folder (so
`ray submit ... -- --config configs/voc.yaml` finds its relative paths). The token is never printed.
EOF
}

die() {
    echo "setup_node.sh: $*" >&2
    exit 2
}

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
project="$(dirname "$script_dir")"
venv=""
python_bin=""
extras=()
bashrc="${HOME:?HOME is not set}/.bashrc"
use_bashrc=true
ray_token_file="$HOME/.yolov2-pipeline/cluster_auth_token"
ray_auth=token
force=false
while [[ $# -gt 0 ]]; do
    case "$1" in
        --project) project="${2:?--project needs a value}"; shift ;;
        --venv) venv="${2:?--venv needs a value}"; shift ;;
        --python) python_bin="${2:?--python needs a value}"; shift ;;
        --extra) extras+=("${2:?--extra needs a value}"); shift ;;
        --bashrc) bashrc="${2:?--bashrc needs a value}"; shift ;;
        --no-bashrc) use_bashrc=false ;;
        --ray-token-file) ray_token_file="${2:?--ray-token-file needs a value}"; shift ;;
        --ray-auth) ray_auth="${2:?--ray-auth needs a value}"; shift ;;
        --force) force=true ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done
project="$(realpath -- "$project")"
[[ -f "$project/pyproject.toml" ]] || die "$project/pyproject.toml not found: --project must be the project checkout"
venv="$(realpath -m -- "${venv:-$project/.venv}")"
[[ "$ray_auth" == token || "$ray_auth" == disabled ]] || die "--ray-auth must be token or disabled, got '$ray_auth'"

# The shell block's Ray authentication: the token file's path (checked here), never the token.
ray_auth_exports() {
    if [[ "$ray_auth" == disabled ]]; then
        echo "setup_node.sh: WARNING: --ray-auth disabled: Ray on this node runs without token authentication;" \
            "anyone who can reach the cluster's ports can submit jobs, which run code as $(id -un)." >&2
        echo "export RAY_AUTH_MODE=disabled"
        return
    fi
    [[ -s "$ray_token_file" ]] || die "the Ray token file $ray_token_file is missing or empty: ray_cluster.yaml's file_mounts copy it from your machine, so run \`make cluster-token\` there before \`ray up\` (or pass --ray-token-file)"
    chmod 600 "$ray_token_file"
    printf 'export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=%q\n' "$(realpath -- "$ray_token_file")"
}
# Checked before the (long) install, used when the shell block is written.
if $use_bashrc; then auth_exports="$(ray_auth_exports)"; fi

is_python311() {
    [[ -n "$1" ]] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null
}

as_root() {
    if [[ "$(id -u)" == 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo -n "$@"
    else
        die "need root (or passwordless sudo) to run: $*"
    fi
}

install_python311() {
    command -v apt-get >/dev/null || die "python3.11 not found and apt-get is not available: install Python 3.11 and pass --python"
    echo "python3.11 not found: installing it with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -q
    if ! as_root apt-get install -y -q python3.11 python3.11-venv; then
        command -v add-apt-repository >/dev/null || die "no python3.11 package here: install Python 3.11 and pass --python"
        as_root add-apt-repository -y ppa:deadsnakes/ppa
        as_root apt-get update -q
        as_root apt-get install -y -q python3.11 python3.11-venv
    fi
}

if [[ -z "$python_bin" ]]; then
    python_bin="$(command -v python3.11 || true)"
    if ! is_python311 "$python_bin" && [[ ! -x "$venv/bin/python" ]]; then
        install_python311
        python_bin="$(command -v python3.11 || true)"
    fi
fi

if [[ -x "$venv/bin/python" ]]; then
    is_python311 "$venv/bin/python" \
        || die "$venv exists but is not a Python 3.11 venv ($("$venv/bin/python" --version 2>&1)): remove it or pass --venv"
    echo "reusing the venv $venv"
else
    is_python311 "$python_bin" || die "'${python_bin:-python3.11}' is not a Python 3.11 interpreter: pass --python"
    echo "creating the venv $venv with $python_bin"
    "$python_bin" -m venv "$venv"
fi

# The install is redone only when what it depends on changes: the pins, the extras, the Python.
stamp_file="$venv/.yolov2-setup-stamp"
stamp="$(
    {
        cat "$project/pyproject.toml"
        printf '%s\n' "project=$project" "${extras[@]}"
        "$venv/bin/python" --version 2>&1
    } | sha256sum | cut -d' ' -f1
)"
if ! $force && [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]]; then
    echo "up to date: $project is installed in $venv (pyproject.toml unchanged; --force reinstalls)"
else
    echo "installing $project into $venv (pip install -e)"
    rm -f "$stamp_file"
    "$venv/bin/python" -m pip install --disable-pip-version-check -q -e "$project" "${extras[@]}"
    printf '%s\n' "$stamp" >"$stamp_file.tmp"
    mv -f "$stamp_file.tmp" "$stamp_file"
fi

if $use_bashrc; then
    begin="# >>> yolov2-pipeline >>>"
    end="# <<< yolov2-pipeline <<<"
    touch "$bashrc"
    tmp="$(mktemp "$bashrc.yolov2.XXXXXX")"
    # Keep everything outside our block, then append the block afresh: running twice adds nothing.
    awk -v b="$begin" -v e="$end" '$0 == b { skip = 1; next } $0 == e { skip = 0; next } !skip' "$bashrc" >"$tmp"
    cat >>"$tmp" <<EOF
$begin
# Written by $script_dir/setup_node.sh; rewritten on every run.
$auth_exports
source "$venv/bin/activate"
# Cluster-wide settings written at start-up (the head writes MLFLOW_TRACKING_URI there).
if [[ -f "\$HOME/.yolov2-cluster.env" ]]; then source "\$HOME/.yolov2-cluster.env"; fi
if [[ "\$PWD" == "\$HOME" ]]; then cd "$project"; fi
$end
EOF
    chmod --reference="$bashrc" "$tmp"
    mv -f "$tmp" "$bashrc"
    echo "activation block written to $bashrc"
fi

"$venv/bin/python" - "$project/pyproject.toml" <<'PY'
import importlib.metadata as md
import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    names = [tomllib.load(f)["project"]["name"], "ray", "torch", "mlflow"]
found = []
for name in names:
    try:
        found.append(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        found.append(f"{name} (not installed)")
print(f"node ready: Python {sys.version.split()[0]}; " + ", ".join(found))
PY
