#!/usr/bin/env bash
# The GPU check on a GPU machine (make gpu-check runs this): install the packed wheels into a temporary
# path (for a machine without a package index), then run benchmarks/gpu_check.py on CUDA.
#   bash benchmarks/gpu_check.sh [OUT_DIR] [gpu_check.py options...]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench_out/gpu-check}"
py="${GPU_PY:-python3}"
site="${GPU_SITE:-/tmp/gpu-site}"
shopt -s nullglob
wheels=(.gpu/wheels/*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
    echo "error: no wheels in .gpu/wheels: run 'make gpu-pack' (on a connected machine) and copy .gpu with the repository" >&2
    exit 2
fi
"$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${wheels[@]}"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$py" benchmarks/gpu_check.py --device "${GPU_DEVICE:-cuda}" --out "$out" "${@:2}"
