#!/usr/bin/env bash
# Submit a MaskFocus RL run to a Ray cluster as a job.
#   deploy/submit.sh [--address http://HEAD:8265] [--submission-id ID] [CONFIG] [extra `maskfocus train` args...]
#   deploy/submit.sh [--address ...] --resume RUN_FOLDER [extra args...]   # continue a stopped run
# --address and --submission-id are `ray job submit`'s wherever they stand; --config CONFIG and --resume RUN may
# stand anywhere too; a bare CONFIG only first (after these options: a bare word no option takes is refused
# before anything is submitted); without either, the default config
# (configs/shapes_tiny.yaml). CONFIG is a path from where you run this, or from the repository root, and must lie
# in the repository outside the folders the upload leaves out (deploy/runtime_env.yaml, .gitignore): the job reads
# the upload.
# Ctrl-C stops following the job, not the job: the script then prints the commands that follow or stop it.
# Without --submission-id the job is named maskfocus_DATE_TIME_PID (printed first). A job stopped with `ray job
# stop` exits 0 here like a finished one: `ray job status ID` tells them apart (STOPPED, SUCCEEDED).
#   deploy/submit.sh CONFIG --check [extra args...]   # the run's checks and plan on the cluster, in seconds
# Local try-out:
#   ray start --head --num-cpus 2   # deploy/runtime_env.yaml gives `ray job stop` time to let the run checkpoint
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
CALLER="$PWD"
ROOT="$(cd "$(dirname "$0")/.." && pwd -P)"
cd "$ROOT"
ADDRESS="${RAY_API_SERVER_ADDRESS:-}"
if [[ -z "$ADDRESS" && "${RAY_ADDRESS:-}" == http* ]]; then ADDRESS="$RAY_ADDRESS"; fi
ADDRESS="${ADDRESS:-http://127.0.0.1:8265}"
SUBMISSION=()
RUN=()   # --config CONFIG or --resume RUN_FOLDER, wherever they were given
REST=()  # every other argument, for `maskfocus train`, in order
needs_value() {  # WHAT OPTION VALUE: the option is followed by a value that is not itself an option
  if [[ -z "$3" || "$3" == -* ]]; then echo "submit.sh: $2 needs $1" >&2; exit 2; fi
}
takes_value() {  # OPTION: a `maskfocus train` option that takes the word after it (--check alone takes none)
  [[ "$1" == --* && "$1" != *=* && "$1" != --c* && "$1" != --help ]]
}
usage() {  # this file's header comment
  sed -n '2,/^set -euo pipefail/p' "$ROOT/deploy/submit.sh" | sed '$d' | sed 's/^# \{0,1\}//'
  echo "The training options: maskfocus train --help"
}
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --address=* | --submission-id=* | --config=* | --resume=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
    --address) needs_value "the job server's address, http://HEAD:8265" "$1" "${2:-}"; ADDRESS="$2"; shift 2 ;;
    --submission-id) needs_value "an ID" "$1" "${2:-}"; SUBMISSION=(--submission-id "$2"); shift 2 ;;
    --resume) needs_value "the run folder (on the shared disk)" "$1" "${2:-}"; RUN+=(--resume "$2"); shift 2 ;;
    --config) needs_value "a config file" "$1" "${2:-}"; RUN+=(--config "$2"); shift 2 ;;
    -*) REST+=("$1"); shift ;;
    *)  # a bare word first is CONFIG; any other is an option's value
      if [[ ${#RUN[@]} -eq 0 && ${#REST[@]} -eq 0 ]]; then
        RUN=(--config "$1")
      elif ((${#REST[@]})) && takes_value "${REST[${#REST[@]}-1]}"; then
        REST+=("$1")
      else  # `maskfocus train` would refuse it on the cluster, after the upload; a config there was a silent default
        echo "submit.sh: $1: a bare word that no option takes; give CONFIG first, or as --config $1" >&2
        exit 2
      fi
      shift ;;
  esac
done
if [[ ${#RUN[@]} -eq 0 ]]; then RUN=(--config configs/shapes_tiny.yaml); fi  # a stopped run resumes with --resume
uploaded_config() {  # CONFIG as given -> its path in the upload, or an error before anything is submitted
  local given="$1" path real
  if [[ "$given" == /* ]]; then path="$given"; else path="$CALLER/$given"; fi
  if [[ ! -f "$path" && "$given" != /* && -f "$ROOT/$given" ]]; then path="$ROOT/$given"; fi
  if [[ ! -f "$path" ]]; then echo "submit.sh: --config $given: file not found" >&2; exit 2; fi
  real="$(cd "$(dirname "$path")" && pwd -P)/$(basename "$path")"
  if [[ "$real" != "$ROOT"/* ]]; then
    echo "submit.sh: --config $given: outside the repository $ROOT, which is all the job uploads; copy it into configs/" >&2
    exit 2
  fi
  case "${real#"$ROOT"/}" in
    maskfocus/* | actors/* | learner/* | tests/* | benchmarks/* | runs/* | outputs/*)
      echo "submit.sh: --config $given: in a folder the upload leaves out (deploy/runtime_env.yaml); copy it into configs/" >&2
      exit 2 ;;
  esac
  if command -v git >/dev/null && git -C "$ROOT" check-ignore -q "${real#"$ROOT"/}" 2>/dev/null; then
    echo "submit.sh: --config $given: .gitignore names it, and the upload leaves out what .gitignore names; copy it into configs/" >&2
    exit 2
  fi
  echo "${real#"$ROOT"/}"
}
if [[ "${RUN[0]}" == --config ]]; then RUN[1]="$(uploaded_config "${RUN[1]}")"; fi
if [[ ${#SUBMISSION[@]} -eq 0 ]]; then SUBMISSION=(--submission-id "maskfocus_$(date +%Y%m%d_%H%M%S)_$$"); fi
if [[ -n "${RAY_AUTH_TOKEN_PATH:-}" && ! -f "$RAY_AUTH_TOKEN_PATH" ]]; then  # the job server would answer 401
  echo "submit.sh: RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH: no such file (the cluster's token, from \`ray get-auth-token\` on the head)" >&2
  exit 2
fi
if [[ -z "${RAY_AUTH_MODE:-}" ]] &&
  [[ -n "${RAY_AUTH_TOKEN:-}" || -n "${RAY_AUTH_TOKEN_PATH:-}" || -f "$HOME/.ray/auth_token" ]]; then
  export RAY_AUTH_MODE=token
fi
echo "submit.sh: job server $ADDRESS, RAY_AUTH_MODE=${RAY_AUTH_MODE:-unset (no token sent)}, job ${SUBMISSION[1]}" >&2
still_running() {  # Ctrl-C ends `ray job submit`'s log tail; the job goes on
  # the commands as typed in a shell need the RAY_AUTH_MODE this script chose (a token is sent only with it)
  local ray_job="${RAY_AUTH_MODE:+RAY_AUTH_MODE=$RAY_AUTH_MODE }ray job"
  echo "submit.sh: stopped following job ${SUBMISSION[1]}; once submitted, it goes on running on the cluster" \
    "($ray_job status --address $ADDRESS ${SUBMISSION[1]}). Follow it again:" \
    "$ray_job logs -f --address $ADDRESS ${SUBMISSION[1]}; stop it (it checkpoints first):" \
    "$ray_job stop --address $ADDRESS ${SUBMISSION[1]}" >&2
  exit 130
}
job_server_answers() {  # a listing fails fast and plainly where `ray job submit` would end in a long traceback
  local listing
  if listing="$(ray job list --address "$ADDRESS" 2>&1 >/dev/null)"; then return 0; fi
  if [[ "$listing" == *"Failed to connect to Ray"* ]]; then
    echo "submit.sh: no Ray job server answers at $ADDRESS; start a cluster (\`ray start --head\` here, or" \
      "\`ray up deploy/cluster.yaml\`) or give --address http://HEAD:8265 (its dashboard's address)" >&2
  else
    echo "submit.sh: the job server at $ADDRESS did not list its jobs: $(tail -n 1 <<<"$listing")" \
      "(a 401 or 403: see the token notes in deploy/submit.sh --help)" >&2
  fi
  exit 2
}
job_server_answers
trap still_running INT
status=0
ray job submit --address "$ADDRESS" "${SUBMISSION[@]}" \
  --working-dir . --runtime-env deploy/runtime_env.yaml -- \
  maskfocus train "${RUN[@]}" --executor ray --address auto "${REST[@]+"${REST[@]}"}" || status=$?
exit "$status"
