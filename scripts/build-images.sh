#!/usr/bin/env bash
# Builds kdpipe's CPU image, tagged <repo>:<version>-cpu (the tag the pipeline's steps name by default), and its
# serving image, <repo>:<version>-serve (docker/Dockerfile.serve: the KServe predictor, no torch).
#   bash scripts/build-images.sh                    # ghcr.io/kdpipe/kdpipe:<version>-cpu and -serve
#   bash scripts/build-images.sh serve              # one of them (cpu, serve)
#   KDPIPE_IMAGE_REPO=registry.example.com/ml/kdpipe bash scripts/build-images.sh && docker push ...
# Base: KDPIPE_BASE_IMAGE if set; else the public python image if it is here or can be pulled; else one built
# from Debian's packages (mmdebstrap), for machines that reach no image registry.
# Dependencies: every pinned wheel is prepared on the host first (constraints.txt), so the build needs no network.
# Extras in the image: KDPIPE_IMAGE_EXTRAS (default k8s,demo: cluster clients, and the demo's teacher).
# The CUDA image (docker/Dockerfile.cuda) needs nvidia/cuda from a registry; where one is reachable:
#   docker build -f docker/Dockerfile.cuda -t <repo>:<version>-cuda .
set -euo pipefail
cd "$(dirname "$0")/.."
# One build at a time: scripts/test.sh starts one ahead of the suite, and the suite's own call waits for it here
# (then finds every layer cached).
mkdir -p build
exec 9>build/.build-images.lock
flock 9
started=$(date +%s)
PY=${KDPIPE_PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' src/kdpipe/__init__.py)
REPO=${KDPIPE_IMAGE_REPO:-ghcr.io/kdpipe/kdpipe}
IMAGES=${*:-cpu serve}
EXTRAS=${KDPIPE_IMAGE_EXTRAS:-k8s,demo}
PUBLIC_BASE=python:3.11.14-slim-bookworm
DEBIAN_BASE=kdpipe/debian-python:bookworm
bash scripts/docker-engine.sh
# As in scripts/install.sh: pip's "Location ... is ignored" lines (a pip.conf naming absent folders) say nothing.
pip_quiet() { "$@" 2> >(grep -v "^WARNING: Location '.*' is ignored: it is neither a file nor a directory" >&2); }

if [ -n "${KDPIPE_BASE_IMAGE:-}" ]; then
  BASE=$KDPIPE_BASE_IMAGE
elif docker image inspect "$PUBLIC_BASE" >/dev/null 2>&1 || timeout 30 docker pull -q "$PUBLIC_BASE" >/dev/null 2>&1; then
  BASE=$PUBLIC_BASE
else
  BASE=$DEBIAN_BASE
  if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    echo "build-images: $PUBLIC_BASE cannot be pulled; building $BASE from Debian's packages" >&2
    if ! command -v mmdebstrap >/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
    fi
    mkdir -p build
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates bookworm build/debian-base.tar
    docker import build/debian-base.tar "$BASE" >/dev/null
    rm -f build/debian-base.tar
  fi
fi

# The wheelhouse, reused while constraints, dependencies and extras are unchanged.
STAMP=$(cat constraints.txt pyproject.toml docker/serve-requirements.txt | sha256sum | cut -c1-16)-$EXTRAS
if [ "$(cat build/wheelhouse/.stamp 2>/dev/null)" != "$STAMP" ]; then
  rm -rf build/wheelhouse
  pip_quiet "$PY" -m pip wheel -q --disable-pip-version-check -w build/wheelhouse -c constraints.txt \
    "torch==${KDPIPE_TORCH_VERSION:-2.13.0}" "setuptools>=68" ".[$EXTRAS]" -r docker/serve-requirements.txt
  rm -f build/wheelhouse/kdpipe-*.whl  # the image builds the package from its sources
  echo "$STAMP" > build/wheelhouse/.stamp
fi

# The wheelhouse reaches the build over loopback (no layer of wheels in the image). Its address is a build arg, so
# part of the install layer's cache key: the same port every time (KDPIPE_WHEELHOUSE_PORT) keeps an unchanged
# rebuild a cache hit; a free one is taken only when that port is busy (that build then misses the cache).
PORT=$("$PY" -c "
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as http.server binds: the last build's port in TIME_WAIT
try:
    s.bind(('127.0.0.1', int(sys.argv[1])))
except OSError:
    s.bind(('127.0.0.1', 0))
print(s.getsockname()[1])" "${KDPIPE_WHEELHOUSE_PORT:-47311}")
"$PY" -m http.server --bind 127.0.0.1 --directory build/wheelhouse "$PORT" >/dev/null 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; rm -rf build/context' EXIT

# build KIND DOCKERFILE: one image from a small build context holding only what its Dockerfile copies.
build() {
  local kind=$1 dockerfile=$2 tag="$REPO:$VERSION-$1" began previous size
  began=$(date +%s)
  rm -rf build/context
  mkdir -p build/context/scripts build/context/docker
  cp -a pyproject.toml constraints.txt README.md src build/context/  # -a: mtimes kept, so an unchanged rebuild is a cache hit
  cp -a scripts/install.sh build/context/scripts/
  cp -a docker/serve-requirements.txt build/context/docker/
  find build/context -name __pycache__ -prune -exec rm -rf {} +
  previous=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
  docker build -q --network host -f "$dockerfile" -t "$tag" \
    --build-arg BASE_IMAGE="$BASE" --build-arg EXTRAS="$EXTRAS" --build-arg WHEELHOUSE="http://127.0.0.1:$PORT/" \
    --build-arg KDPIPE_IMAGE="$tag" --build-arg KDPIPE_GIT_SHA="$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    build/context >/dev/null
  if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect -f '{{.Id}}' "$tag")" ]; then
    docker rmi "$previous" >/dev/null 2>&1 || true  # the build this one replaces (kept if a container uses it)
  fi
  size=$(docker image inspect -f '{{.Size}}' "$tag")
  echo "built $tag from $BASE: $((size / 1000000)) MB, $(( $(date +%s) - began )) s"
}
for kind in $IMAGES; do
  case $kind in
    cpu) build cpu docker/Dockerfile ;;
    serve) build serve docker/Dockerfile.serve ;;
    *) echo "build-images: unknown image $kind (cpu, serve)" >&2; exit 2 ;;
  esac
done
echo "build-images: done in $(( $(date +%s) - started )) s"
