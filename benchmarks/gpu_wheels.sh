#!/usr/bin/env bash
# The wheels the lent GPU machine lacks, downloaded here for it (it runs Python 3.12 with its own torch and
# can fetch nothing; see the device README): diffusers, pydantic and open_clip with their small dependencies,
# at the versions installed here. Ray (79 MB) does not fit the 64 MiB a device call carries, so the GPU session
# runs the checks that need no Ray (tiny, nccl, scale). Usage, here:
#   benchmarks/gpu_wheels.sh            # writes .gpu_wheels/ (git-ignored, about 8 MB)
# then the device command (carry: [".gpu_wheels"]), as in benchmarks/gpu_check.py's docstring.
set -euo pipefail
if [[ $# -gt 0 ]]; then
  echo "usage: benchmarks/gpu_wheels.sh   (no arguments; writes .gpu_wheels/ in the repository)" >&2
  [[ "$1" == -h || "$1" == --help ]] && exit 0
  exit 2
fi
cd "$(dirname "$0")/.."
OUT=.gpu_wheels
PACKAGES=(diffusers pydantic pydantic_core annotated_types typing_inspection open_clip_torch ftfy wcwidth)
pins=()
for name in "${PACKAGES[@]}"; do
  pins+=("${name}==$(python -c "import importlib.metadata as m; print(m.version('$name'))")")
done
NEW="$OUT.partial"  # the old wheels stay until the new ones are all here
rm -rf "$NEW" && mkdir -p "$NEW"
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d "$NEW" "${pins[@]}"
rm -rf "$OUT" && mv "$NEW" "$OUT"
ls -la "$OUT"
du -sh "$OUT"
