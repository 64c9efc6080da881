#!/usr/bin/env bash
# Submit a MaskFocus RL run to a Ray cluster as a job.
#   deploy/submit.sh [--address http://HEAD:8265] [--submission-id ID] [CONFIG] [extra `maskfocus train` args...]
#   deploy/submit.sh [--address ...] --resume RUN_FOLDER [extra args...]   # continue a stopped run
# --address and --submission-id are `ray job submit`'s wherever they stand; --config CONFIG and --resume RUN may
# stand anywhere too; without either, the default config (configs/shapes_tiny.yaml).
#   deploy/submit.sh CONFIG --check [extra args...]   # the run's checks and plan on the cluster, in seconds
# Local try-out:
#   RAY_JOB_STOP_WAIT_TIME_S=120 ray start --head --num-cpus 2   # time for `ray job stop` to let the run checkpoint
#   deploy/submit.sh configs/shapes_tiny.yaml --iterations 5 --set train.out_dir=$PWD/runs
# The address is --address, else RAY_API_SERVER_ADDRESS, else an http:// RAY_ADDRESS, else the local dashboard.
# Nodes need maskfocus installed (deploy/runtime_env.yaml). Give train.out_dir an absolute path on a disk every
# node mounts at the same path (the driver writes the run folder, the learner its checkpoints; a learner that
# cannot see it stops the run at once): a relative one lands in the job's temporary working directory.
#
# Token auth. Ray >= 2.60 protects a cluster with a token when it is started with RAY_AUTH_MODE=token, or
# when a token already exists where `ray start` looks (~/.ray/auth_token, RAY_AUTH_TOKEN_PATH, RAY_AUTH_TOKEN);
# `ray.init()` local clusters always use one. The client must then present the same token, and it sends one
# only when RAY_AUTH_MODE=token: this script sets that when a token is found (same three places) and
# RAY_AUTH_MODE is unset. Get the cluster's token with `ray get-auth-token` on the head node and copy it to
# the client's ~/.ray/auth_token (or export RAY_AUTH_TOKEN). A cluster started with RAY_AUTH_MODE=disabled
# (trusted networks only) needs RAY_AUTH_MODE=disabled here too. A 401 from the job server means no token
# was sent, a 403 a different token.
set -euo pipefail
cd "$(dirname "$0")/.."
ADDRESS="${RAY_API_SERVER_ADDRESS:-}"
if [[ -z "$ADDRESS" && "${RAY_ADDRESS:-}" == http* ]]; then ADDRESS="$RAY_ADDRESS"; fi
ADDRESS="${ADDRESS:-http://127.0.0.1:8265}"
SUBMISSION=()
RUN=()   # --config CONFIG or --resume RUN_FOLDER, wherever they were given
REST=()  # every other argument, for `maskfocus train`, in order
needs_value() {  # WHAT OPTION VALUE: the option is followed by a value that is not itself an option
  if [[ -z "$3" || "$3" == -* ]]; then echo "submit.sh: $2 needs $1" >&2; exit 2; fi
}
while (($#)); do
  case "$1" in
    --address=* | --submission-id=* | --config=* | --resume=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
    --address) needs_value "the job server's address, http://HEAD:8265" "$1" "${2:-}"; ADDRESS="$2"; shift 2 ;;
    --submission-id) needs_value "an ID" "$1" "${2:-}"; SUBMISSION=(--submission-id "$2"); shift 2 ;;
    --resume) needs_value "the run folder (on the shared disk)" "$1" "${2:-}"; RUN+=(--resume "$2"); shift 2 ;;
    --config) needs_value "a config file" "$1" "${2:-}"; RUN+=(--config "$2"); shift 2 ;;
    -*) REST+=("$1"); shift ;;
    *)  # a bare word first is CONFIG; any other is an option's value
      if [[ ${#RUN[@]} -eq 0 && ${#REST[@]} -eq 0 ]]; then RUN=(--config "$1"); else REST+=("$1"); fi
      shift ;;
  esac
done
if [[ ${#RUN[@]} -eq 0 ]]; then RUN=(--config configs/shapes_tiny.yaml); fi  # a stopped run resumes with --resume
if [[ -z "${RAY_AUTH_MODE:-}" ]] &&
  [[ -n "${RAY_AUTH_TOKEN:-}" || -n "${RAY_AUTH_TOKEN_PATH:-}" || -f "$HOME/.ray/auth_token" ]]; then
  export RAY_AUTH_MODE=token
fi
echo "submit.sh: job server $ADDRESS, RAY_AUTH_MODE=${RAY_AUTH_MODE:-unset (no token sent)}" >&2
exec ray job submit --address "$ADDRESS" "${SUBMISSION[@]+"${SUBMISSION[@]}"}" \
  --working-dir . --runtime-env deploy/runtime_env.yaml -- \
  maskfocus train "${RUN[@]}" --executor ray --address auto "${REST[@]+"${REST[@]}"}"
