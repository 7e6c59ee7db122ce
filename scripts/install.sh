#!/usr/bin/env bash
# Installs kdpipe into the current Python environment: torch pinned first (CPU wheel by default; set
# KDPIPE_TORCH_INDEX to a CUDA wheel index for GPU images), then the package with constraints.txt.
# KDPIPE_WHEELHOUSE=DIR|URL installs from that folder of wheels only, no package index (the CPU image's build).
# Used by scripts/setup.sh (developers, CI) and by the Dockerfiles: one install path everywhere.
#   usage: scripts/install.sh [EXTRAS]      e.g. scripts/install.sh dev,k8s
#          scripts/install.sh serve         the serving image's packages only (docker/serve-requirements.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${KDPIPE_PYTHON:-python}
EXTRAS=${1:-}
TORCH="torch==${KDPIPE_TORCH_VERSION:-2.13.0}"
PIP=(pip_quiet "$PY" -m pip install -q --disable-pip-version-check)
# A machine whose pip.conf lists package folders it does not have makes pip warn once per package it resolves
# ("Location ... is ignored"): hundreds of lines that say nothing about this install. Those lines alone are
# dropped; every other warning and error still shows.
pip_quiet() { "$@" 2> >(grep -v "^WARNING: Location '.*' is ignored: it is neither a file nor a directory" >&2); }
if [ -n "${KDPIPE_WHEELHOUSE:-}" ]; then
  PIP+=(--no-index --find-links "$KDPIPE_WHEELHOUSE")
fi
if [ "$EXTRAS" = serve ]; then
  # The serving image is measured in MB and in seconds to its first answer: the libraries' own test suites go
  # (pandas' alone is 46 MB), everything else is compiled to byte-code once here (the server then starts without
  # compiling mlflow), and pip leaves with its work done.
  "${PIP[@]}" --no-compile -c constraints.txt -r docker/serve-requirements.txt
  site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  rm -rf "$site"/pandas/tests "$site"/numpy/tests "$site"/numpy/*/tests
  "$PY" -m pip uninstall -q -y pip setuptools 2>/dev/null || true
  "$PY" -m compileall -q -j 0 "$site" >/dev/null
  exit 0
fi
if [ -n "${KDPIPE_TORCH_INDEX:-}" ] && [ -z "${KDPIPE_WHEELHOUSE:-}" ]; then
  "${PIP[@]}" --index-url "$KDPIPE_TORCH_INDEX" "$TORCH"
else
  "${PIP[@]}" "$TORCH"
fi
"${PIP[@]}" -c constraints.txt ${KDPIPE_EDITABLE:+-e} ".${EXTRAS:+[$EXTRAS]}"
