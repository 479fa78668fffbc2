#!/usr/bin/env bash
# The measured bench on a fresh NVIDIA GPU machine (torch + upstream triton preinstalled, no venv):
# see scripts/gpu_bench.py. Usage: bash scripts/gpu_bench.sh [--quick] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
exec env PYTHONPATH=. timeout 480 python3 scripts/gpu_bench.py "$@"
