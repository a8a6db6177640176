#!/usr/bin/env bash
# MLflow tracking server for the diffusion-sweep cluster, run on the Ray head node.
# cluster/gpu.yaml mounts this file as ~/start_mlflow.sh and runs it from head_start_ray_commands, so
# every `ray up` (re)starts the server.
#
#   bash ~/start_mlflow.sh [start|stop|status|backup]  (default: start = stop a running server, start anew)
#
# The server binds to the head's PRIVATE IP only: workers reach it inside the VPC, you reach it through
# an SSH port-forward (docs/cluster.md). It refuses 0.0.0.0, :: and public addresses.
#
# Environment (all optional; ~/cluster.env is sourced first if present):
#   MLFLOW_HOST                   address to bind (default: the head's private IPv4 address)
#   MLFLOW_PORT                   port (default: 5000)
#   MLFLOW_HOME                   folder for the sqlite store, local artifacts, log and pid file
#                                 (default: ~/mlflow)
#   MLFLOW_BACKEND_STORE_URI      default: sqlite:///$MLFLOW_HOME/mlflow.db (on the head's disk)
#   MLFLOW_ARTIFACTS_DESTINATION  default: $MLFLOW_HOME/artifacts; e.g. s3://bucket/mlflow-artifacts
#   MLFLOW_SERVER_WORKERS         server worker processes (default: 2)
#   MLFLOW_STORE_BACKUP           e.g. s3://bucket/mlflow/mlflow.db: the SQLite store survives `ray down`. On
#                                 start it is restored from there when the head has none; while the server runs
#                                 a snapshot goes there every MLFLOW_BACKUP_INTERVAL_S seconds (default 60), and
#                                 on stop and `backup` at once (python -m sweep.store_sync)
#   MLFLOW_DRY_RUN=1              print the server command and the tracking URI, start nothing
#
# On success it writes the tracking URI (http://<private-ip>:5000) to ~/.mlflow_tracking_uri, which
# ~/node_env.sh exports as MLFLOW_TRACKING_URI.
set -euo pipefail

if [ -f "$HOME/cluster.env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/cluster.env"
fi

action="${1:-start}"

MLFLOW_HOME="${MLFLOW_HOME:-$HOME/mlflow}"
PORT="${MLFLOW_PORT:-5000}"
BACKEND_STORE_URI="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$MLFLOW_HOME/mlflow.db}"
ARTIFACTS_DESTINATION="${MLFLOW_ARTIFACTS_DESTINATION:-$MLFLOW_HOME/artifacts}"
WORKERS="${MLFLOW_SERVER_WORKERS:-2}"
STORE_BACKUP="${MLFLOW_STORE_BACKUP:-}"
BACKUP_INTERVAL_S="${MLFLOW_BACKUP_INTERVAL_S:-60}"
BACKUP_PIDFILE="$MLFLOW_HOME/store-backup.pid"
PIDFILE="$MLFLOW_HOME/mlflow-server.pid"
LOGFILE="$MLFLOW_HOME/mlflow-server.log"
URI_FILE="$HOME/.mlflow_tracking_uri"

die() { echo "start_mlflow.sh: $*" >&2; exit 1; }

# The address the default route leaves from: the node's private IP in a VPC (no packet is sent).
private_ipv4() {
    local addr=""
    if command -v ip >/dev/null 2>&1; then
        addr="$(ip -4 route get 1.1.1.1 2>/dev/null \
            | awk '{for (i = 1; i < NF; i++) if ($i == "src") { print $(i + 1); exit }}')"
    fi
    if [ -z "$addr" ]; then
        addr="$(hostname -I 2>/dev/null | awk '{print $1}')"
    fi
    printf '%s\n' "$addr"
}

# Private (RFC 1918) or loopback IPv4 only. Everything else (0.0.0.0, ::, public IPs, hostnames) is
# refused: whoever reaches an MLflow server can read and write every run.
is_private_ipv4() {
    [[ "$1" =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] || return 1
    local a="${BASH_REMATCH[1]}" b="${BASH_REMATCH[2]}"
    (( a == 10 )) && return 0
    (( a == 192 && b == 168 )) && return 0
    (( a == 172 && b >= 16 && b <= 31 )) && return 0
    (( a == 127 )) && return 0
    return 1
}

HOST="${MLFLOW_HOST:-$(private_ipv4)}"
[ -n "$HOST" ] || die "could not determine this node's private IP; set MLFLOW_HOST"
is_private_ipv4 "$HOST" \
    || die "refusing to bind MLflow to '$HOST': only private (10/8, 172.16/12, 192.168/16) or loopback IPv4 addresses are allowed"
[[ "$PORT" =~ ^[0-9]+$ ]] || die "MLFLOW_PORT must be a number, got '$PORT'"

TRACKING_URI="http://$HOST:$PORT"

server_cmd=(
    mlflow server
    --host "$HOST"
    --port "$PORT"
    --backend-store-uri "$BACKEND_STORE_URI"
    --serve-artifacts
    --artifacts-destination "$ARTIFACTS_DESTINATION"
    --workers "$WORKERS"
)

# True when the pid file names a live MLflow server that this script started.
server_running() {
    [ -f "$PIDFILE" ] || return 1
    local pid
    pid="$(cat "$PIDFILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q mlflow
}

stop_server() {
    if server_running; then
        local pid i
        pid="$(cat "$PIDFILE")"
        echo "Stopping MLflow server (process group $pid)"
        # The server runs in its own session (setsid below): its pid is also its process group id,
        # so this reaches the uvicorn workers too, and nothing else.
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 30); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$PIDFILE"
}

# The SQLite file behind BACKEND_STORE_URI, when it is one.
store_file() {
    case "$BACKEND_STORE_URI" in
        sqlite:///*) printf '%s\n' "${BACKEND_STORE_URI#sqlite:///}" ;;
        *) return 1 ;;
    esac
}

backup_store() {
    local db
    [ -n "$STORE_BACKUP" ] && db="$(store_file)" && [ -f "$db" ] || return 0
    python -m sweep.store_sync backup "$db" "$STORE_BACKUP"
}

# Before the server starts on a fresh head: the store of the previous cluster, from the bucket.
restore_store() {
    local db
    [ -n "$STORE_BACKUP" ] && db="$(store_file)" && [ ! -e "$db" ] || return 0
    python -m sweep.store_sync restore "$STORE_BACKUP" "$db"
}

stop_backups() {
    if [ -f "$BACKUP_PIDFILE" ]; then
        kill -TERM -- "-$(cat "$BACKUP_PIDFILE")" 2>/dev/null || true
        rm -f "$BACKUP_PIDFILE"
    fi
}

# A snapshot to the bucket every BACKUP_INTERVAL_S seconds, in its own session like the server.
start_backups() {
    [ -n "$STORE_BACKUP" ] && store_file >/dev/null || return 0
    [[ "$BACKUP_INTERVAL_S" =~ ^[0-9]+$ ]] || die "MLFLOW_BACKUP_INTERVAL_S must be a number, got '$BACKUP_INTERVAL_S'"
    nohup setsid bash -c 'echo $$ > "$0"; while sleep "$1"; do bash "$2" backup; done' \
        "$BACKUP_PIDFILE" "$BACKUP_INTERVAL_S" "$(realpath "$0")" >> "$MLFLOW_HOME/store-backup.log" 2>&1 < /dev/null &
}

wait_healthy() {
    local i
    for i in $(seq 1 90); do
        if curl -fsS --max-time 2 "$TRACKING_URI/health" >/dev/null 2>&1; then
            return 0
        fi
        if [ -f "$PIDFILE" ] && ! server_running; then
            break                                   # the server exited: no point waiting
        fi
        sleep 1
    done
    echo "--- last lines of $LOGFILE ---" >&2
    tail -n 40 "$LOGFILE" >&2 || true
    return 1
}

start_server() {
    if [ "${MLFLOW_DRY_RUN:-0}" = "1" ]; then
        printf '%q ' "${server_cmd[@]}"
        printf '\nMLFLOW_TRACKING_URI=%s\n' "$TRACKING_URI"
        if [ -n "$STORE_BACKUP" ] && store_file >/dev/null; then
            printf 'MLFLOW_STORE_BACKUP=%s every %s s\n' "$STORE_BACKUP" "$BACKUP_INTERVAL_S"
        fi
        return 0
    fi
    command -v mlflow >/dev/null 2>&1 || die "mlflow is not on PATH (is ~/venv set up?)"
    mkdir -p "$MLFLOW_HOME"
    case "$ARTIFACTS_DESTINATION" in
        *://*) ;;                                   # s3://, gs://, ... : nothing to create
        *) mkdir -p "$ARTIFACTS_DESTINATION" ;;
    esac
    stop_backups
    stop_server
    restore_store
    if curl -fsS --max-time 2 "$TRACKING_URI/health" >/dev/null 2>&1; then
        die "something else already serves $TRACKING_URI; stop it or set MLFLOW_PORT"
    fi
    echo "Starting MLflow server on $TRACKING_URI (backend $BACKEND_STORE_URI, artifacts $ARTIFACTS_DESTINATION)"
    # setsid: own session, survives the end of the SSH session that `ray up` runs this in.
    # The inner bash records its pid (= the new session's process group id), then execs the server.
    nohup setsid bash -c 'echo $$ > "$0"; exec "$@"' "$PIDFILE" "${server_cmd[@]}" \
        > "$LOGFILE" 2>&1 < /dev/null &
    sleep 1
    wait_healthy || die "MLflow server did not become healthy on $TRACKING_URI"
    printf '%s\n' "$TRACKING_URI" > "$URI_FILE.tmp"
    mv "$URI_FILE.tmp" "$URI_FILE"
    start_backups
    echo "MLflow server is up: MLFLOW_TRACKING_URI=$TRACKING_URI (log: $LOGFILE)"
}

case "$action" in
    start) start_server ;;
    stop) stop_backups; backup_store; stop_server ;;
    backup) backup_store ;;
    status)
        if server_running; then
            echo "running (pid $(cat "$PIDFILE")) on $TRACKING_URI"
        else
            echo "not running"
            exit 1
        fi
        ;;
    *) die "unknown action '$action' (use start, stop, status or backup)" ;;
esac
