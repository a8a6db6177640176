# Environment of every diffusion-sweep cluster node. cluster/gpu.yaml mounts this file as ~/node_env.sh
# and sources it from ~/.bashrc, so it applies to every command Ray runs on the node (setup, `ray start`
# and therefore all Ray worker processes) and to every `ray attach` / `ray exec` shell.
# Sourced, not executed: no `set -e`, no output, no side effects besides exports.

# The project's virtualenv (Python 3.11 + CUDA torch + ray + this project), made by setup_commands.
if [ -f "$HOME/venv/bin/activate" ]; then
    . "$HOME/venv/bin/activate"
fi

# Ray token authentication (Ray >= 2.52): RAY_AUTH_MODE=token makes `ray start`, ray.init() and the
# job/dashboard clients require/send the token; the token comes from RAY_AUTH_TOKEN_PATH
# (the file that file_mounts copies from your machine's ~/.ray/auth_token).
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$HOME/.ray/auth_token"

# Per-user settings (DIFFUSION_SWEEP_STORAGE, MLFLOW_ARTIFACTS_DESTINATION, ...): cluster/cluster.env.
if [ -f "$HOME/cluster.env" ]; then
    . "$HOME/cluster.env"
fi

# MLflow tracking server on the head's private IP. The head's ~/.mlflow_tracking_uri is written by
# start_mlflow.sh, a worker's by worker_setup_commands (from RAY_HEAD_IP). Every process that logs to
# MLflow must set the URI itself (multi-node: mlflow #7206); this makes it the default everywhere.
if [ -z "${MLFLOW_TRACKING_URI:-}" ] && [ -f "$HOME/.mlflow_tracking_uri" ]; then
    MLFLOW_TRACKING_URI="$(cat "$HOME/.mlflow_tracking_uri")"
    export MLFLOW_TRACKING_URI
fi
