#!/usr/bin/env bash
# The test command: installs everything on a fresh machine, then runs the whole suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The HPO tests run two workers against a real PostgreSQL server on loopback (Debian's package).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  else
    echo "PostgreSQL server missing: run 'sudo apt-get install postgresql' (needed by tests/test_hpo.py)" >&2
  fi
fi
# tests/test_containers.py builds the image and runs the demo in it: a Docker engine must answer (as root on a
# fresh machine this installs Debian's docker.io and starts dockerd).
bash scripts/docker-engine.sh
# The images build beside the first tests (mostly package unpacking and I/O); tests/test_containers.py's own build
# waits for this one and is then a cache hit. A failure here shows again, with its message, in that test.
mkdir -p build
bash scripts/build-images.sh > build/images-ahead.log 2>&1 &
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=30 "$@"
