#!/usr/bin/env bash
# Creates .venv and installs kdpipe (editable) with its test and cluster extras. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
KDPIPE_PYTHON=.venv/bin/python KDPIPE_EDITABLE=1 bash scripts/install.sh dev,k8s,docker
