#!/usr/bin/env bash
# The GPU benchmark on a lent GPU machine that reaches no network (the device tool), from the repo root: the
# image's python3 with its CUDA torch, transformers and sentence-transformers, plus what bench/gpu_kit.py packed
# into .gpu/ (carry it). Arguments go to bench/gpu_embedding.py. The table and JSON land in $OUT when set.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d .gpu/wheels ]; then
  echo "no .gpu/ here: run '.venv/bin/python bench/gpu_kit.py' on the development machine and carry .gpu" >&2
  exit 2
fi
site=/tmp/gpu-site
python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .gpu/wheels/*.whl
export PYTHONPATH="$site:$PWD/protos:$PWD" PYTHONUNBUFFERED=1
if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; fi
out="${OUT:-var/bench}"
mkdir -p "$out"
python3 bench/gpu_embedding.py --model .gpu/model --texts-file .gpu/texts.json "$@" 2>&1 | tee "$out/gpu_embedding.txt"
if [ -n "${OUT:-}" ]; then cp docs/results/gpu_embedding.json var/bench/embedding-gpu.log "$OUT/"; fi
