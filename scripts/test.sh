#!/usr/bin/env bash
# The README's test command: a real Elasticsearch for the run (unless ES_URL is set),
# then the whole pytest suite; Elasticsearch is stopped afterwards whatever the outcome.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [ -z "${ES_URL:-}" ]; then
    trap 'bash scripts/es.sh stop >/dev/null 2>&1 || true' EXIT
    ES_URL=$(bash scripts/es.sh start | tail -n 1)
    export ES_URL
    echo "test: Elasticsearch at $ES_URL"
fi
"$VENV/bin/python" -m pytest "$@"
