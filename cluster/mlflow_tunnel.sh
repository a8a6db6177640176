#!/usr/bin/env bash
# Open the cluster's MLflow UI at http://localhost:5000 through an SSH tunnel to the head (Ctrl-C closes).
#
#   bash cluster/mlflow_tunnel.sh [CLUSTER_YAML]           (default: cluster/gpu.yaml; run from the repo root)
#
# MLflow binds to the head's private IP, not to its localhost, so `ray attach -p 5000` (which forwards
# to the head's localhost) does not reach it; this forwards to <head-private-ip>:5000 instead.
# Environment: LOCAL_PORT (default 5000), SSH_KEY (default: the key `ray up` created,
# ~/.ssh/ray-autoscaler_<region>.pem), SSH_USER (default ubuntu).
set -euo pipefail

CONFIG="${1:-cluster/gpu.yaml}"
LOCAL_PORT="${LOCAL_PORT:-5000}"
SSH_USER="${SSH_USER:-ubuntu}"
[ -f "$CONFIG" ] || { echo "no such cluster config: $CONFIG" >&2; exit 2; }

REGION="$(awk '$1 == "region:" {print $2; exit}' "$CONFIG")"
KEY="${SSH_KEY:-}"
if [ -z "$KEY" ]; then
    for candidate in "$HOME/.ssh/ray-autoscaler_$REGION.pem" "$HOME"/.ssh/ray-autoscaler_*_"$REGION".pem; do
        if [ -f "$candidate" ]; then KEY="$candidate"; break; fi
    done
fi
[ -n "$KEY" ] && [ -f "$KEY" ] || { echo "SSH key not found; set SSH_KEY=/path/to/key.pem" >&2; exit 1; }

HEAD_PUBLIC_IP="$(ray get-head-ip "$CONFIG" 2>/dev/null | tail -n 1)"
TRACKING_URI="$(ray exec "$CONFIG" 'cat ~/.mlflow_tracking_uri' 2>/dev/null \
    | grep -Eo 'http://[0-9.]+:[0-9]+' | tail -n 1)"
[ -n "$HEAD_PUBLIC_IP" ] && [ -n "$TRACKING_URI" ] \
    || { echo "could not find the head or its MLflow server (is the cluster up?)" >&2; exit 1; }
TARGET="${TRACKING_URI#http://}"

echo "MLflow UI: http://localhost:$LOCAL_PORT  ->  $TRACKING_URI on the head ($HEAD_PUBLIC_IP). Ctrl-C to close."
echo "Locally: export MLFLOW_TRACKING_URI=http://localhost:$LOCAL_PORT"
exec ssh -i "$KEY" -o IdentitiesOnly=yes -o StrictHostKeyChecking=accept-new -o ExitOnForwardFailure=yes \
    -N -L "127.0.0.1:$LOCAL_PORT:$TARGET" "$SSH_USER@$HEAD_PUBLIC_IP"
