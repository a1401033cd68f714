#!/usr/bin/env bash
# One-GPU check of slm_ray, no internet needed: decode speed and memory of full-size SmolLM2-135M,
# SmolLM2-1.7B and Qwen3-0.6B (random weights from bench/architectures) through transformers and
# slm_ray's HF backend, 8-bit loading, faiss on the GPU and vLLM (each skipped with the reason when
# its package is missing). Report: $OUT if set, else bench/results/gpu_check_<card>.{md,json}.
#
#   bash scripts/gpu_check.sh              # on the GPU machine (3 to 6 minutes, capped at 8)
#   bash scripts/gpu_check.sh --dry-run    # the same code, tiny shapes, on a CPU (< 1 minute)
#   bash scripts/gpu_check.sh --help       # options: --models, --batches, --bandwidth-gbs, --skip ...
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
# A hard cap (GPU_CHECK_TIMEOUT seconds) above the script's own --time-budget: the report is
# rewritten after every section, so a run cut short keeps what it measured.
exec timeout --kill-after=20 "${GPU_CHECK_TIMEOUT:-480}" "$PYTHON" scripts/gpu_check.py "$@"
