#!/usr/bin/env bash
# The README's test command: a real Elasticsearch for the run (unless ES_URL is set),
# then the whole pytest suite; Elasticsearch is stopped afterwards whatever the outcome.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [ -z "${ES_URL:-}" ]; then
    # A port of its own, so a developer's `make es-start` instance is neither reused
    # nor stopped, and two runs do not clash.
    ES_PORT=${ES_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
    export ES_PORT
    trap 'bash scripts/es.sh stop >/dev/null 2>&1 || true' EXIT
    ES_URL=$(bash scripts/es.sh start | tail -n 1)
    export ES_URL
    echo "test: Elasticsearch at $ES_URL"
fi
"$VENV/bin/python" -m pytest "$@"
