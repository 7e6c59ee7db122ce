#!/usr/bin/env bash
# Creates .venv and installs kdpipe with its test extras. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# torch first and pinned: on a CPU machine this takes the CPU wheel; unpinned, pip would pull CUDA builds.
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==${KDPIPE_TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
