#!/usr/bin/env bash
# GPU readiness check: every method on one CUDA GPU in under 8 minutes, a Markdown report at the end.
#   bash scripts/gpu_check.sh [--out DIR] [--peak-tflops N]   # on the GPU server
#   bash scripts/gpu_check.sh --smoke                          # the CPU version the tests run
# What it measures and checks: the docstring of scripts/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
exec "$PY" scripts/gpu_check.py "$@"
