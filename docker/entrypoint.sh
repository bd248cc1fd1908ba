#!/bin/sh
# Starts TransferLab in the container: the dashboard, which starts the worker, with every
# piece of state (database, checkpoints, weights cache, demo data) under $TL_STATE.
set -eu
: "${TL_STATE:=/state}"
: "${TL_HOST:=0.0.0.0}"
: "${TL_PORT:=8501}"
: "${TL_DEMO_PER_CLASS:=150}"
export DATABASE_URL="${DATABASE_URL:-sqlite:///$TL_STATE/experiments.db}"
export TL_RUNS_DIR="${TL_RUNS_DIR:-$TL_STATE/runs}"
export TORCH_HOME="${TORCH_HOME:-$TL_STATE/torch}"
export TL_DATA_ROOTS="${TL_DATA_ROOTS:-/data:$TL_STATE/demo-data}"

case "$TL_HOST" in
  127.0.0.1|localhost|::1) ;;
  *) if [ -z "${TL_PASSWORD:-}" ]; then
       echo "error: serving on $TL_HOST makes the dashboard reachable from the network; set a password:" \
            "docker run -e TL_PASSWORD=... (or TL_HOST=127.0.0.1)" >&2
       exit 2
     fi ;;
esac
if ! mkdir -p "$TL_RUNS_DIR" "$TORCH_HOME" 2>/dev/null || [ ! -w "$TL_STATE" ]; then
  echo "error: $TL_STATE is not writable by uid $(id -u); mount a writable folder: -v <state>:$TL_STATE" >&2
  exit 2
fi
if [ ! -d "$TL_STATE/demo-data/animals" ]; then
  python -m tl_core demo-data "$TL_STATE/demo-data" --per-class "$TL_DEMO_PER_CLASS"
fi
exec python -m streamlit run app.py --server.address "$TL_HOST" --server.port "$TL_PORT" \
  --server.headless true --browser.gatherUsageStats false
