#!/usr/bin/env bash
# Makes sure a Docker engine answers: as root on Debian/Ubuntu, installs docker.io and starts dockerd when
# none runs (a fresh CI machine); otherwise says what is missing. Safe to re-run.
set -euo pipefail
if docker info >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "kdpipe: no Docker engine answers (docker info failed): start Docker, or run this as root to install it" >&2
  exit 2
fi
if ! command -v dockerd >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null
fi
mkdir -p /var/log
nohup dockerd >/var/log/kdpipe-dockerd.log 2>&1 &
for _ in $(seq 60); do
  if docker info >/dev/null 2>&1; then exit 0; fi
  sleep 1
done
echo "kdpipe: dockerd did not answer within 60 s; see /var/log/kdpipe-dockerd.log" >&2
exit 1
