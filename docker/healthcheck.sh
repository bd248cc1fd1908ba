#!/bin/sh
# The image's health check (the Dockerfile's HEALTHCHECK), by what the entrypoint serves:
#   serve, dashboard  the dashboard answers its health endpoint (in serve, a worker that dies is
#                     restarted by the service itself: tl_core/executors/supervisor.py)
#   worker            this container's worker heartbeats in the store: `python -m tl_core worker
#                     --health` exits 1 once its heartbeat is older than TL_WORKER_TIMEOUT_S
# docker-compose.yml's worker service asks the worker the same way.
set -eu
: "${TL_STATE:=/state}"
: "${TL_PORT:=8501}"
export DATABASE_URL="${DATABASE_URL:-sqlite:///$TL_STATE/experiments.db}"  # as the entrypoint's
mode=$(cat "${TMPDIR:-/tmp}/transferlab-mode" 2>/dev/null || echo serve)
if [ "$mode" = worker ]; then
  exec python -m tl_core worker --health
fi
exec python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$TL_PORT/_stcore/health', timeout=8)"
