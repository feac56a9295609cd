#!/usr/bin/env bash
# The GPU check (issue 18): one run of at most 8 minutes on a GPU machine, one JSON of figures.
#   bash benchmarks/gpu_check.sh [OUT_DIR]     # default: $OUT if set (the device tool), else .
# Installs nothing when .venv exists (make install otherwise: torch must be a CUDA build, e.g.
# `make install TORCH=torch==2.13.0`); see benchmarks/gpu_check.py for what it measures.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-.}}"
mkdir -p "$out"
[ -x .venv/bin/python ] || make install
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/nvidia_smi.csv" || true
timeout 480 .venv/bin/python benchmarks/gpu_check.py --out "$out/gpu_check.json" 2>&1 | tee "$out/gpu_check.log"
