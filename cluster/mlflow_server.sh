#!/usr/bin/env bash
# Start an MLflow tracking server (REST API + UI) for the pipeline's runs, in the foreground.
#
#   cluster/mlflow_server.sh                                   # SQLite + artifacts in ./workspace, 127.0.0.1:5000
#   cluster/mlflow_server.sh --workspace /data/ws --port 5001
#   MLFLOW_BACKEND_STORE_URI=postgresql://mlflow@db:5432/mlflow cluster/mlflow_server.sh \
#       --artifacts-destination s3://your-bucket/yolov2/mlartifacts
#   nohup cluster/mlflow_server.sh --host 127.0.0.1 --also-bind 10.0.1.23 >mlflow.log 2>&1 &
#
# It binds 127.0.0.1 unless told otherwise. The default store is the one the pipeline writes to when
# no server runs (sqlite:///<workspace>/mlflow.db, artifacts in <workspace>/mlartifacts), so the
# server shows every local run. The backend URI is handed to mlflow through MLFLOW_BACKEND_STORE_URI,
# not its command line, so a database password never shows in `ps`; it is printed masked.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: cluster/mlflow_server.sh [options]

Start `mlflow server` in the foreground (stop it with Ctrl-C or by killing its process group).

Options:
  --workspace DIR              local workspace folder holding the default store (default: ./workspace)
  --backend-store-uri URI      SQLAlchemy URI of the tracking store, e.g. sqlite:////abs/path/mlflow.db
                               or postgresql://user@host:5432/db (password in ~/.pgpass or PGPASSWORD,
                               not in the URI). Default: $MLFLOW_BACKEND_STORE_URI, else
                               sqlite:///<workspace>/mlflow.db
  --artifacts-destination URI  where the server stores the artifacts it proxies: a local folder or
                               s3://bucket/prefix, gs://bucket/prefix (default: <workspace>/mlartifacts)
  --default-artifact-root URI  instead of proxying, let clients write artifacts straight to URI
                               (they need their own object-store credentials)
  --host HOST                  interface to bind (default: 127.0.0.1; 0.0.0.0 exposes the server
                               to every network this machine is on)
  --also-bind HOST             bind this interface too (repeatable), e.g. a cluster head's private IP
                               so the worker nodes can log while the UI stays reachable through an
                               SSH tunnel to 127.0.0.1 (uses gunicorn, which can listen on several)
  --port PORT                  port (default: 5000)
  --workers N                  server worker processes (default: 2)
  --allowed-hosts LIST         passed to mlflow (Host header check); default: localhost and private IPs
  --dry-run                    print the command and settings, do not start
  -h, --help                   show this help

Environment: MLFLOW_BIN (the mlflow executable; default: the project's .venv, else PATH);
MLFLOW_BACKEND_STORE_URI (default backend); MLFLOW_SERVER_ENABLE_JOB_EXECUTION (default: false,
the pipeline does not use MLflow's job runner).
EOF
}

die() {
    echo "mlflow_server.sh: $*" >&2
    exit 2
}

workspace="workspace"
backend="${MLFLOW_BACKEND_STORE_URI:-}"
artifacts_destination=""
default_artifact_root=""
host="127.0.0.1"
also_bind=()
port=5000
workers=2
allowed_hosts=""
dry_run=false
while [[ $# -gt 0 ]]; do
    case "$1" in
        --workspace) workspace="${2:?--workspace needs a value}"; shift ;;
        --backend-store-uri) backend="${2:?--backend-store-uri needs a value}"; shift ;;
        --artifacts-destination) artifacts_destination="${2:?--artifacts-destination needs a value}"; shift ;;
        --default-artifact-root) default_artifact_root="${2:?--default-artifact-root needs a value}"; shift ;;
        --host) host="${2:?--host needs a value}"; shift ;;
        --also-bind) also_bind+=("${2:?--also-bind needs a value}"); shift ;;
        --port) port="${2:?--port needs a value}"; shift ;;
        --workers) workers="${2:?--workers needs a value}"; shift ;;
        --allowed-hosts) allowed_hosts="${2:?--allowed-hosts needs a value}"; shift ;;
        --dry-run) dry_run=true ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done

[[ "$port" =~ ^[0-9]+$ ]] && ((port >= 1 && port <= 65535)) || die "--port must be an integer in 1..65535, got '$port'"
[[ "$workers" =~ ^[0-9]+$ ]] && ((workers >= 1)) || die "--workers must be a positive integer, got '$workers'"
[[ -z "$artifacts_destination" || -z "$default_artifact_root" ]] \
    || die "give either --artifacts-destination (proxied) or --default-artifact-root (direct), not both"

mlflow_bin="${MLFLOW_BIN:-}"
if [[ -z "$mlflow_bin" ]]; then
    script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    if [[ -x "$script_dir/../.venv/bin/mlflow" ]]; then
        mlflow_bin="$script_dir/../.venv/bin/mlflow"
    else
        mlflow_bin="$(command -v mlflow || true)"
    fi
fi
[[ -n "$mlflow_bin" && -x "$mlflow_bin" ]] || die "cannot find the 'mlflow' command (activate the project's venv or set MLFLOW_BIN)"
python_bin="$(dirname "$mlflow_bin")/python"
[[ -x "$python_bin" ]] || python_bin="$(command -v python3)"

# user:password@ -> user:***@ in anything printed.
mask() {
    sed -E 's#(://[^:/@]+):[^@/]*@#\1:***@#'
}

workspace_abs=""
if [[ -z "$backend" || (-z "$artifacts_destination" && -z "$default_artifact_root") ]]; then
    [[ "$workspace" != *"://"* ]] || die "--workspace must be a local folder (the SQLite store lives there), got '$workspace'; for an object-store workspace give --backend-store-uri and --artifacts-destination"
    workspace_abs="$(realpath -m -- "$workspace")"
fi
backend="${backend:-sqlite:///$workspace_abs/mlflow.db}"
if [[ -z "$default_artifact_root" ]]; then
    artifacts_destination="${artifacts_destination:-$workspace_abs/mlartifacts}"
fi

# A clear error now rather than a traceback from the server later.
port_free() {
    "$python_bin" - "$1" "$port" <<'PY'
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
try:
    s.bind((sys.argv[1], int(sys.argv[2])))
except OSError as e:
    sys.exit(f"{sys.argv[1]}:{sys.argv[2]}: {e.strerror}")
finally:
    s.close()
PY
}

server_args=(server --host "$host" --port "$port" --workers "$workers")
if [[ -n "$default_artifact_root" ]]; then
    server_args+=(--no-serve-artifacts --default-artifact-root "$default_artifact_root")
else
    server_args+=(--serve-artifacts --artifacts-destination "$artifacts_destination")
fi
[[ -z "$allowed_hosts" ]] || server_args+=(--allowed-hosts "$allowed_hosts")
if ((${#also_bind[@]})); then
    # uvicorn (mlflow's default) listens on one address; gunicorn takes several --bind.
    gunicorn_opts="--no-control-socket"
    for extra in "${also_bind[@]}"; do
        gunicorn_opts+=" --bind $extra:$port"
    done
    server_args+=(--gunicorn-opts "$gunicorn_opts")
fi

echo "MLflow tracking store: $(mask <<<"$backend")"
if [[ -n "$default_artifact_root" ]]; then
    echo "MLflow artifacts:      $default_artifact_root (clients write there directly)"
else
    echo "MLflow artifacts:      $artifacts_destination (proxied by the server)"
fi
if [[ "$host" == "0.0.0.0" || "$host" == "::" ]]; then
    echo "warning: binding $host exposes the server on every network of this machine" >&2
fi
for h in "$host" "${also_bind[@]}"; do
    case "$h" in
        0.0.0.0 | ::) url_host=127.0.0.1 ;;
        *:*) url_host="[$h]" ;;
        *) url_host="$h" ;;
    esac
    echo "MLflow UI:             http://$url_host:$port"
done
if $dry_run; then
    printf 'command: MLFLOW_BACKEND_STORE_URI=<above> %q' "$mlflow_bin"
    printf ' %q' "${server_args[@]}"
    echo
    exit 0
fi
case "$backend" in
    sqlite:///*)
        db_path="${backend#sqlite:///}"
        [[ "$db_path" == /* ]] || db_path="$PWD/$db_path"
        mkdir -p "$(dirname "$db_path")"
        ;;
    postgresql* | postgres*)
        "$python_bin" -c "import psycopg2" 2>/dev/null \
            || die "a PostgreSQL backend needs psycopg2 in mlflow's Python: $python_bin -m pip install psycopg2-binary"
        ;;
    *) ;;
esac
if [[ -n "$artifacts_destination" && "$artifacts_destination" == s3://* ]]; then
    "$python_bin" -c "import boto3" 2>/dev/null \
        || die "an s3:// artifact store needs boto3 in mlflow's Python: $python_bin -m pip install boto3"
fi

for h in "$host" "${also_bind[@]}"; do
    port_free "$h" || die "cannot listen on $h:$port (another server there? pick --port)"
done

export MLFLOW_BACKEND_STORE_URI="$backend"
# MLflow 3's job runner (GenAI scorers; eight huey consumer processes) is not used by this pipeline.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
exec "$mlflow_bin" "${server_args[@]}"
