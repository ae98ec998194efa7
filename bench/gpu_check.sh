#!/usr/bin/env bash
# The GPU figures of docs/results.md in one run (under 8 minutes): needs an NVIDIA GPU and the
# gpu extra (pip install -e '.[gpu]' in a venv without the cpu one). Arguments go to
# bench/gpu_check.py (e.g. --model runs/demo/model); writes bench/out/gpu_check.json.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
exec timeout 480 "${PYTHON:-python3}" bench/gpu_check.py "$@"
