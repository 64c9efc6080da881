#!/usr/bin/env bash
# Time `maskfocus eval` over the whole shapes-geneval benchmark (588 rows x 4 images = 2,352) on this machine.
# Usage: benchmarks/eval_speed.sh [OUT_DIR]; writes OUT_DIR/summary.json and prints the wall time.
# Results: benchmarks/RESULTS.md, "Evaluation speed (issue: shapes world)", "Probes of the nineteenth session".
set -euo pipefail
if [[ $# -gt 1 || "${1:-}" == -* ]]; then
  echo "usage: benchmarks/eval_speed.sh [OUT_DIR]   (the full benchmark, 4 images per row; default runs/bench_eval)" >&2
  [[ "${1:-}" == -h || "${1:-}" == --help ]] && exit 0
  exit 2
fi
out=${1:-runs/bench_eval}
mkdir -p "$out"
SECONDS=0
maskfocus eval --benchmark shapes-geneval --num-images-per-prompt 4 --out "$out/results.jsonl" \
  --summary "$out/summary.json" --grid "$out/grid.png"
echo "wall seconds: $SECONDS on $(nproc) cores"
