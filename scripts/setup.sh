#!/usr/bin/env bash
# Create the virtual environment and install neuralnumerics with its extras.
# On machines without an NVIDIA GPU it installs PyTorch's CPU wheel first, so pip does not pull a
# multi-GB CUDA build; with a GPU (nvidia-smi present) pip's default torch, a CUDA build, is kept.
# Override with TORCH_SPEC, e.g. TORCH_SPEC="torch==2.13.0" bash scripts/setup.sh.
set -euo pipefail
VENV="${1:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  if [ -n "${TORCH_SPEC:-}" ]; then
    "${PIP[@]}" "$TORCH_SPEC"
  elif command -v nvidia-smi >/dev/null 2>&1; then
    "${PIP[@]}" torch
  else
    # the local-version CPU wheel (from a wheel cache or find-links), else PyTorch's CPU index
    "${PIP[@]}" "torch==2.13.0+cpu" 2>/dev/null \
      || "${PIP[@]}" torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
"${PIP[@]}" -e ".[all]"
"$VENV/bin/python" -c "import torch, neuralnumerics; print('neuralnumerics', neuralnumerics.__version__, '| torch', torch.__version__, '| cuda', torch.cuda.is_available())"
