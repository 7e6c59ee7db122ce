#!/usr/bin/env bash
# The demo command: installs everything on a fresh machine, then runs the whole pipeline offline
# (KFP local runner, MLflow on SQLite in ./mlflow.db) on configs/demo.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/kdpipe run configs/demo.yaml "$@"
