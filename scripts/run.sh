#!/usr/bin/env bash
# `make run`: the collector on 127.0.0.1:5683 with the embedded sqlite store in ./data/.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export COLLECTOR_HOST=${COLLECTOR_HOST:-127.0.0.1}
export COLLECTOR_PORT=${COLLECTOR_PORT:-5683}
export COLLECTOR_SINK=${COLLECTOR_SINK:-sqlite}
export COLLECTOR_SQLITE_PATH=${COLLECTOR_SQLITE_PATH:-./data/events.db}
echo "iot-collector: coap://$COLLECTOR_HOST:$COLLECTOR_PORT/events, sink=$COLLECTOR_SINK"
if [ "$COLLECTOR_SINK" = sqlite ]; then
    echo "  data goes to $COLLECTOR_SQLITE_PATH (read it with: sqlite3 $COLLECTOR_SQLITE_PATH 'select * from events')"
    echo "  against Elasticsearch instead: make es-start, then make run-es"
fi
echo "  send an event:  $VENV/bin/iot-client -H $COLLECTOR_HOST -P $COLLECTOR_PORT send temperature 21.5"
echo "  Ctrl-C stops it cleanly."
exec "$VENV/bin/iot-collector" serve
