#!/usr/bin/env bash
# Submit a MaskFocus RL run to a Ray cluster as a job.
#   deploy/submit.sh [--address http://HEAD:8265] [CONFIG] [extra `maskfocus train` args...]
# Local try-out:   ray start --head --num-cpus 2 && deploy/submit.sh configs/shapes_tiny.yaml
# Token auth (Ray >= 2.60 enables it by default): the client must agree with the cluster. Either both run
# with RAY_AUTH_MODE=disabled (trusted network only), or the client gets the cluster's token
# (RAY_AUTH_TOKEN, or the token file the head node wrote) before submitting.
set -euo pipefail
cd "$(dirname "$0")/.."
ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
if [[ "${1:-}" == "--address" ]]; then ADDRESS="$2"; shift 2; fi
CONFIG="${1:-configs/shapes_tiny.yaml}"
shift || true
exec ray job submit --address "$ADDRESS" --working-dir . --runtime-env deploy/runtime_env.yaml -- \
  maskfocus train --config "$CONFIG" --executor ray --address auto "$@"
