#!/usr/bin/env bash
# A two-node Ray cluster on one machine: a head and a worker, two separate `ray start` processes,
# each with its own custom resource (node_head / node_worker) so tests can pin work to a node and
# show that it really spreads over nodes. The dashboard (job server) binds 127.0.0.1; Ray's own GCS,
# raylet and object-manager ports listen on every interface and the nodes advertise the machine's
# IP (Ray rewrites a 127.0.0.1 --node-ip-address: services.resolve_ip_for_localhost), so keep the
# machine's firewall closed to the ports below. Every port asks for the cluster's token (Ray's token
# authentication): a token file, mode 0600, in the cluster's temp dir, made by `up`.
#
#   cluster/local_cluster.sh up      [--port 23000] [--cpus 1] [--object-store-mb 200] [--token-file FILE]
#   cluster/local_cluster.sh status  [--port 23000]
#   cluster/local_cluster.sh down    [--port 23000]
#
# Every port is derived from --port (GCS port P; head P+1..P+9, worker P+11..P+19, Ray workers in
# P+100..P+299), so two clusters with different --port values, and any `ray.init()` using Ray's
# random or default ports, do not collide. `down` stops only the processes of this cluster (those
# whose command line names its temp dir): `ray stop` would kill every Ray process on the machine.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: cluster/local_cluster.sh up|down|status [options]

A two-node Ray cluster on this machine (head + worker, separate `ray start` processes) with custom
resources {"node_head": 1} on the head and {"node_worker": 1} on the worker. The dashboard (job
server) binds 127.0.0.1; Ray's core ports listen on every interface (Ray does not bind them to
loopback), so keep this machine's firewall closed to P..P+299. Ray's token authentication is on:
every client (drivers, `ray job submit`, the dashboard) must present the cluster's token.

Commands:
  up        start the head, then the worker; prints the addresses to use
  status    print whether this cluster runs, its addresses, and `ray status`
  down      stop this cluster's processes only (SIGTERM, then SIGKILL after a grace period)

Options:
  --port P             GCS port of the head (default: $YOLOV2_RAY_PORT or 23000); the dashboard
                       (job server) listens on P+1, every other port of the cluster is in P+2..P+299
  --cpus N             CPUs advertised by each node (default: 1)
  --object-store-mb M  object store size of each node in MB (default: 200)
  --temp-dir DIR       Ray's temp dir for both nodes (default: /tmp/yolov2-ray-P; keep it short:
                       Ray's socket paths under it must stay below 108 characters)
  --no-dashboard       do not start the dashboard (then `ray job submit` is not available)
  --token-file FILE    the cluster's Ray token file (default: <temp dir>/auth_token); `up` creates it
                       with a fresh token, mode 0600, if it is missing, and never prints the token
  -h, --help           show this help

Jobs from `ray job submit` start in the repository root with the Python that runs Ray (the
project's .venv, or RAY_BIN's), so `-- python pipelines/full.py --config ...` works as is.

Authentication: every `ray` command here runs with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH set
to the token file (a RAY_AUTH_TOKEN in the environment is ignored). Drivers and `ray job submit` pass
the same two variables (`up` and `status` print them); jobs inherit them from the cluster. To run
without authentication, export RAY_AUTH_MODE=disabled yourself: the script then warns what that exposes.
RAY_BIN: the `ray` executable (default: the project's .venv, else PATH).

Examples:
  cluster/local_cluster.sh up --port 23000
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=/tmp/yolov2-ray-23000/auth_token
  ray job submit --address http://127.0.0.1:23001 -- python -c 'import ray; ray.init(); print(ray.nodes())'
  python -c 'import ray; ray.init(address="127.0.0.1:23000"); print(ray.cluster_resources())'
  cluster/local_cluster.sh down --port 23000
EOF
}

die() {
    echo "local_cluster.sh: $*" >&2
    exit 2
}

command_name=""
port="${YOLOV2_RAY_PORT:-23000}"
cpus=1
object_store_mb=200
temp_dir=""
token_file=""
dashboard=true
while [[ $# -gt 0 ]]; do
    case "$1" in
        up | down | status) command_name="$1" ;;
        --port) port="${2:?--port needs a value}"; shift ;;
        --port=*) port="${1#*=}" ;;
        --cpus) cpus="${2:?--cpus needs a value}"; shift ;;
        --cpus=*) cpus="${1#*=}" ;;
        --object-store-mb) object_store_mb="${2:?--object-store-mb needs a value}"; shift ;;
        --object-store-mb=*) object_store_mb="${1#*=}" ;;
        --temp-dir) temp_dir="${2:?--temp-dir needs a value}"; shift ;;
        --temp-dir=*) temp_dir="${1#*=}" ;;
        --no-dashboard) dashboard=false ;;
        --token-file) token_file="${2:?--token-file needs a value}"; shift ;;
        --token-file=*) token_file="${1#*=}" ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done
[[ -n "$command_name" ]] || { usage >&2; die "give a command: up, down or status"; }
[[ "$port" =~ ^[0-9]+$ ]] && ((port >= 1024 && port + 300 <= 65535)) \
    || die "--port must be an integer in 1024..65235, got '$port'"
[[ "$cpus" =~ ^[0-9]+$ ]] && ((cpus >= 1)) || die "--cpus must be a positive integer, got '$cpus'"
[[ "$object_store_mb" =~ ^[0-9]+$ ]] && ((object_store_mb >= 80)) \
    || die "--object-store-mb must be an integer >= 80 (Ray's minimum is 75 MB), got '$object_store_mb'"
temp_dir="${temp_dir:-/tmp/yolov2-ray-$port}"
[[ "$temp_dir" == /* ]] || temp_dir="$PWD/$temp_dir"
temp_dir="${temp_dir%/}"
((${#temp_dir} <= 40)) || die "--temp-dir '$temp_dir' is too long (Ray's socket paths under it must stay short; use <= 40 characters)"
token_file="${token_file:-$temp_dir/auth_token}"
[[ "$token_file" == /* ]] || token_file="$PWD/$token_file"

# One auth mode for the cluster, its drivers and `ray job submit`: token, unless the user exported
# RAY_AUTH_MODE=disabled. The token comes from the token file only (Ray would prefer RAY_AUTH_TOKEN).
case "${RAY_AUTH_MODE:-token}" in
    token)
        export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$token_file"
        unset RAY_AUTH_TOKEN
        ;;
    disabled)
        export RAY_AUTH_MODE=disabled
        unset RAY_AUTH_TOKEN RAY_AUTH_TOKEN_PATH
        ;;
    *) die "RAY_AUTH_MODE='$RAY_AUTH_MODE' is not a Ray authentication mode: unset it (token) or export RAY_AUTH_MODE=disabled" ;;
esac
export RAY_USAGE_STATS_ENABLED=0

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ray_bin="${RAY_BIN:-}"
if [[ -z "$ray_bin" ]]; then
    if [[ -x "$repo_root/.venv/bin/ray" ]]; then
        ray_bin="$repo_root/.venv/bin/ray"
    else
        ray_bin="$(command -v ray || true)"
    fi
fi
[[ -n "$ray_bin" && -x "$ray_bin" ]] || die "cannot find the 'ray' command (activate the project's venv or set RAY_BIN)"
# Jobs from `ray job submit` run `python ...` with the PATH of the `ray start` that started the
# head: put the Python that has Ray (and this project) first.
ray_bin_dir="$(cd "$(dirname "$ray_bin")" && pwd)"
export PATH="$ray_bin_dir:$PATH"
python_bin="$ray_bin_dir/python"
[[ -x "$python_bin" ]] || python_bin="$(command -v python3 || true)"

host=127.0.0.1
dashboard_port=$((port + 1))
address="$host:$port"

# The processes of this cluster. `up` starts both nodes in a new session (setsid), so every process
# Ray forks (gcs_server, raylets, dashboard, agents, workers) carries that session id, even after
# it is re-parented to init. Ray also writes the session dir (inside the temp dir) into the command
# line of its daemons; their descendants are included too. Zombies are left out (nothing to kill).
sid_file="$temp_dir/yolov2-cluster.sid"
cluster_pids() {
    local uid seeds
    uid="$(id -u)"
    seeds="$(
        pgrep -u "$uid" -f -- "$temp_dir/session_" || true
        if [[ -s "$sid_file" ]]; then pgrep -u "$uid" -s "$(cat "$sid_file")" -f "ray" || true; fi
    )"
    [[ -n "${seeds//[[:space:]]/}" ]] || return 0
    ps -eo pid=,ppid=,stat= | awk -v seeds="$seeds" -v self="$$" '
        BEGIN { n = split(seeds, s); for (i = 1; i <= n; i++) keep[s[i]] = 1 }
        { parent[$1] = $2; state[$1] = $3; order[NR] = $1 }
        END {
            changed = 1
            while (changed) {
                changed = 0
                for (i = 1; i <= NR; i++) {
                    p = order[i]
                    if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 }
                }
            }
            for (p in keep) if ((p in state) && state[p] !~ /^Z/ && p != self) print p
        }'
}

is_up() {
    [[ -n "$(cluster_pids)" ]]
}

# What a client sets to join: the token file's path, never the token.
client_env() {
    if [[ "$RAY_AUTH_MODE" == token ]]; then
        echo "RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH"
    else
        echo "RAY_AUTH_MODE=disabled"
    fi
}

print_addresses() {
    echo "Ray GCS address:  $address   (ray.init(address=\"$address\") with $(client_env))"
    if $dashboard || [[ -f "$temp_dir/yolov2-dashboard" ]]; then
        echo "Job submission:   $(client_env) ray job submit --address http://$host:$dashboard_port -- python your_script.py"
    fi
    echo "Temp dir / logs:  $temp_dir/session_latest/logs"
}

warn_if_disabled() {
    if [[ "$RAY_AUTH_MODE" == disabled ]]; then
        echo "local_cluster.sh: WARNING: RAY_AUTH_MODE=disabled: the cluster runs without token authentication." \
            "Its ports $port..$((port + 299)) listen on every interface of this machine and its job API on" \
            "127.0.0.1, so anyone who can reach them can submit jobs, which run code as $(id -un), and read its" \
            "data. Unset RAY_AUTH_MODE to turn token authentication back on." >&2
    fi
}

# The temp dir holds the token file and Ray's sockets: it must be this user's own, not writable by others.
check_temp_dir() {
    [[ -d "$temp_dir" && ! -L "$temp_dir" && -O "$temp_dir" ]] \
        || die "--temp-dir $temp_dir is not a folder of yours (owner: $(stat -c %U "$temp_dir" 2>/dev/null || echo '?')): pick another --temp-dir"
    [[ -z "$(find "$temp_dir" -maxdepth 0 -perm /022)" ]] \
        || die "--temp-dir $temp_dir can be written by other users: run chmod go-w $temp_dir, or pick another --temp-dir"
}

# The cluster's token file: created with a fresh token (0600) if missing, checked if present
# (pipelines/ray_auth.py, which never prints the token).
ensure_token_file() {
    [[ -n "$python_bin" ]] || die "cannot find a Python to create the token file with (set RAY_BIN to the venv's ray)"
    (cd "$repo_root" && "$python_bin" -m pipelines.ray_auth token-file "$token_file") \
        || die "no usable token file at $token_file (message above)"
}

# Runs inside `setsid` (see start_cluster): head first, then the worker joins it.
start_nodes() {
    ps -o sid= -p $$ | tr -d ' ' >"$sid_file"
    echo "starting the head node (GCS $address)..."
    if ! "$ray_bin" "${head_args[@]}" >"$temp_dir/head-start.log" 2>&1; then
        cat "$temp_dir/head-start.log" >&2
        echo "local_cluster.sh: the head node did not start (log above, also in $temp_dir/head-start.log)" >&2
        return 1
    fi
    echo "starting the worker node..."
    if ! "$ray_bin" "${worker_args[@]}" >"$temp_dir/worker-start.log" 2>&1; then
        cat "$temp_dir/worker-start.log" >&2
        echo "local_cluster.sh: the worker node did not start (log above, also in $temp_dir/worker-start.log)" >&2
        return 1
    fi
}

start_cluster() {
    if is_up; then
        echo "a cluster is already running with temp dir $temp_dir:"
        print_addresses
        return 0
    fi
    mkdir -p -m 700 "$temp_dir"
    check_temp_dir
    warn_if_disabled
    if [[ "$RAY_AUTH_MODE" == token ]]; then ensure_token_file; fi
    rm -f "$temp_dir/yolov2-dashboard"
    local osm=$((object_store_mb * 1000 * 1000))
    local head_args=(
        start --head
        --port="$port"
        --num-cpus="$cpus" --num-gpus=0
        --resources='{"node_head": 1}'
        --object-store-memory="$osm"
        --temp-dir="$temp_dir"
        --ray-client-server-port=$((port + 2))
        --node-manager-port=$((port + 3))
        --object-manager-port=$((port + 4))
        --dashboard-agent-listen-port=$((port + 5))
        --dashboard-agent-grpc-port=$((port + 6))
        --metrics-export-port=$((port + 7))
        --runtime-env-agent-port=$((port + 8))
        --min-worker-port=$((port + 100)) --max-worker-port=$((port + 199))
        --disable-usage-stats
    )
    if $dashboard; then
        # The job server that `ray job submit` talks to lives in the dashboard process.
        head_args+=(--include-dashboard=true --dashboard-host="$host" --dashboard-port="$dashboard_port")
        touch "$temp_dir/yolov2-dashboard"
    else
        head_args+=(--include-dashboard=false)
    fi
    local worker_args=(
        start
        --address="$address"
        --num-cpus="$cpus" --num-gpus=0
        --resources='{"node_worker": 1}'
        --object-store-memory="$osm"
        --temp-dir="$temp_dir"
        --node-manager-port=$((port + 13))
        --object-manager-port=$((port + 14))
        --dashboard-agent-listen-port=$((port + 15))
        --dashboard-agent-grpc-port=$((port + 16))
        --metrics-export-port=$((port + 17))
        --runtime-env-agent-port=$((port + 18))
        --min-worker-port=$((port + 200)) --max-worker-port=$((port + 299))
        --disable-usage-stats
    )
    # Both `ray start` run inside one new session: its id, saved in the temp dir, finds every
    # process of this cluster later (see cluster_pids), whoever their parent is by then.
    # Started from the repository root: jobs from `ray job submit` run in the directory where the
    # head was started, so `python pipelines/full.py ...` works as an entrypoint.
    (cd "$repo_root" && setsid -w bash -c "set -euo pipefail; $(declare -p head_args worker_args ray_bin temp_dir sid_file address); $(declare -f start_nodes); start_nodes") \
        || { stop_cluster >/dev/null 2>&1 || true; die "the cluster did not start (logs in $temp_dir/*-start.log)"; }
    echo "two-node Ray cluster up (head: node_head, worker: node_worker; $cpus CPU each)"
    print_addresses
}

stop_cluster() {
    local pids
    pids="$(cluster_pids)"
    if [[ -z "$pids" ]]; then
        echo "no cluster running with temp dir $temp_dir"
        return 0
    fi
    echo "stopping $(wc -w <<<"$pids") Ray processes of the cluster in $temp_dir..."
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    local waited=0
    while [[ -n "$(cluster_pids)" ]] && ((waited < 100)); do
        sleep 0.1
        waited=$((waited + 1))
    done
    pids="$(cluster_pids)"
    if [[ -n "$pids" ]]; then
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        sleep 0.5
    fi
    pids="$(cluster_pids)"
    [[ -z "$pids" ]] || die "could not stop processes: $pids"
    rm -f "$temp_dir/ray_current_cluster" "$temp_dir/yolov2-dashboard" "$sid_file"
    echo "stopped"
}

show_status() {
    if ! is_up; then
        echo "down (no Ray process uses $temp_dir)"
        return 3
    fi
    echo "up"
    print_addresses
    "$ray_bin" status --address="$address" || true
}

case "$command_name" in
    up) start_cluster ;;
    down) stop_cluster ;;
    status) show_status ;;
esac
