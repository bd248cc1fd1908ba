#!/bin/sh
# Starts TransferLab in the container, with every piece of state (database, checkpoints, weights
# cache, demo data) under $TL_STATE. One optional command:
#   serve (default)  the service (tl_core/executors/supervisor.py), under tini: the worker, restarted if it dies
#                    (runs left running before a restart resume from their checkpoints), and the
#                    dashboard; `docker stop` stops both, each training run at its next batch
#   dashboard        the pages only (TL_NO_WORKER=1): the workers run in other containers/machines
#   worker           a worker only (the service without its dashboard): no page, no password
set -eu
: "${TL_STATE:=/state}"
: "${TL_HOST:=0.0.0.0}"
: "${TL_PORT:=8501}"
: "${TL_DEMO_PER_CLASS:=150}"
export DATABASE_URL="${DATABASE_URL:-sqlite:///$TL_STATE/experiments.db}"
export TL_RUNS_DIR="${TL_RUNS_DIR:-$TL_STATE/runs}"
export TORCH_HOME="${TORCH_HOME:-$TL_STATE/torch}"
export TL_DATA_ROOTS="${TL_DATA_ROOTS:-/data:$TL_STATE/demo-data}"

mode="${1:-serve}"
case "$mode" in
  serve|dashboard|worker) ;;
  *) echo "error: unknown command '$mode': give serve (the default: dashboard and worker), dashboard" \
          "(the pages only) or worker (a worker only)" >&2
     exit 2 ;;
esac
echo "$mode" > "${TMPDIR:-/tmp}/transferlab-mode" 2>/dev/null || true  # what docker/healthcheck.sh asks

if [ "$mode" != worker ]; then
  case "$TL_HOST" in
    127.0.0.1|localhost|::1) ;;
    # Signing in through the team's identity provider ([auth] in the secrets, mounted at
    # /app/.streamlit/secrets.toml) does instead of the password; the dashboard checks it is complete.
    *) if [ -z "${TL_PASSWORD:-}" ] && ! grep -qs '^[[:space:]]*\[auth' .streamlit/secrets.toml "${HOME:-/}/.streamlit/secrets.toml"; then
         echo "error: serving on $TL_HOST makes the dashboard reachable from the network; set a password:" \
              "docker run -e TL_PASSWORD=... , or sign in through your identity provider ([auth] in" \
              ".streamlit/secrets.toml, mounted with -v <secrets.toml>:/app/.streamlit/secrets.toml:ro)," \
              "or TL_HOST=127.0.0.1" >&2
         exit 2
       fi ;;
  esac
fi
if ! mkdir -p "$TL_RUNS_DIR" "$TORCH_HOME" 2>/dev/null || [ ! -w "$TL_STATE" ]; then
  echo "error: $TL_STATE is not writable by uid $(id -u); mount a writable folder: -v <state>:$TL_STATE" >&2
  exit 2
fi
if [ "$mode" != worker ] && [ ! -d "$TL_STATE/demo-data/animals" ]; then
  python -m tl_core demo-data "$TL_STATE/demo-data" --per-class "$TL_DEMO_PER_CLASS"
fi
case "$mode" in
  serve) exec python -m tl_core serve --host "$TL_HOST" --port "$TL_PORT" ;;
  worker) exec python -m tl_core serve --no-dashboard ;;
  dashboard) export TL_NO_WORKER=1
             exec python -m streamlit run app.py --server.address "$TL_HOST" --server.port "$TL_PORT" \
               --server.headless true --browser.gatherUsageStats false ;;
esac
