#!/usr/bin/env bash
# An MLflow tracking server in a cluster's topology, on this machine: PostgreSQL (Debian's package) as the backend
# store, artifacts served through the server, and a database for Optuna's HPO workers. For
# `kdpipe run --runner docker` on a laptop, and for the tests.
#   bash scripts/tracking-server.sh start DIR [PORT]   # prints MLFLOW_TRACKING_URI=... and OPTUNA_STORAGE=...
#   bash scripts/tracking-server.sh stop DIR
# PostgreSQL listens on PORT+1 (both on 127.0.0.1). As root, the database runs as the postgres user.
set -euo pipefail
cd "$(dirname "$0")/.."
ACTION=${1:?usage: tracking-server.sh start|stop DIR [PORT]}
DIR=$(mkdir -p "${2:?usage: tracking-server.sh start|stop DIR [PORT]}" && cd "$2" && pwd)
PORT=${3:-5000}
PG_PORT=$((PORT + 1))
AS=()
if [ "$(id -u)" = 0 ]; then AS=(runuser -u postgres --); fi
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)

if [ "$ACTION" = stop ]; then
  if [ -f "$DIR/mlflow.pid" ]; then kill -- -"$(cat "$DIR/mlflow.pid")" 2>/dev/null || true; rm -f "$DIR/mlflow.pid"; fi
  if [ -n "$BIN" ] && [ -d "$DIR/pg" ]; then "${AS[@]}" "$BIN/pg_ctl" -D "$DIR/pg" -m fast stop >/dev/null 2>&1 || true; fi
  exit 0
fi

if [ -z "$BIN" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  else
    echo "tracking-server: PostgreSQL is not installed: sudo apt-get install postgresql" >&2; exit 2
  fi
fi
if [ "$(id -u)" = 0 ]; then chown postgres "$DIR"; fi
if [ ! -d "$DIR/pg" ]; then
  "${AS[@]}" "$BIN/initdb" -D "$DIR/pg" -U postgres --auth=trust -E UTF8 >/dev/null
fi
"${AS[@]}" "$BIN/pg_ctl" -D "$DIR/pg" -l "$DIR/pg.log" -w \
  -o "-p $PG_PORT -k $DIR -c listen_addresses=127.0.0.1" start >/dev/null
for db in mlflow optuna; do
  "${AS[@]}" "$BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres "$db" 2>/dev/null || true
done
DB="postgresql+psycopg://postgres@127.0.0.1:$PG_PORT"
MLFLOW=${KDPIPE_PYTHON:-.venv/bin/python}
[ -x "$MLFLOW" ] || MLFLOW=python3
mkdir -p "$DIR/artifacts"
setsid "$MLFLOW" -m mlflow server --backend-store-uri "$DB/mlflow" --artifacts-destination "$DIR/artifacts" \
  --host 127.0.0.1 --port "$PORT" --workers 1 >"$DIR/mlflow.log" 2>&1 < /dev/null &
SERVER=$!
echo $SERVER > "$DIR/mlflow.pid"
# A first start migrates the database (tens of seconds on a busy 2-core machine): wait up to 3 minutes.
deadline=$((SECONDS + 180))
while [ $SECONDS -lt $deadline ]; do
  if "$MLFLOW" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=1)" 2>/dev/null; then
    echo "MLFLOW_TRACKING_URI=http://127.0.0.1:$PORT"
    echo "OPTUNA_STORAGE=$DB/optuna"
    exit 0
  fi
  if ! kill -0 "$SERVER" 2>/dev/null; then
    echo "tracking-server: mlflow server ($MLFLOW) exited at start: $(tail -n 3 "$DIR/mlflow.log" | tr '\n' ' ')" >&2
    exit 1
  fi
  sleep 0.5
done
echo "tracking-server: mlflow server did not answer on port $PORT within 180 s; see $DIR/mlflow.log" >&2
exit 1
