#!/usr/bin/env bash
# One-shot set-up for docker-compose: waits for Elasticsearch and Kibana, then
# imports the data view, search, visualizations and dashboard shipped in
# saved_objects.ndjson (overwriting older copies, so it is safe to re-run).
# The index template is not installed here: the collector installs its own.
set -euo pipefail
KIBANA_URL=${KIBANA_URL:-http://localhost:5601}
ELASTICSEARCH_URL=${ELASTICSEARCH_URL:-http://localhost:9200}
SAVED_OBJECTS=${SAVED_OBJECTS:-$(dirname "$0")/saved_objects.ndjson}
WAIT_SECONDS=${WAIT_SECONDS:-300}
# With Elasticsearch security on, these sign every request (a user that may import
# saved objects, e.g. `elastic`; Helm passes the in-chart Elasticsearch's).
auth=()
if [ -n "${ELASTIC_PASSWORD:-}" ]; then
    auth=(-u "${ELASTIC_USERNAME:-elastic}:$ELASTIC_PASSWORD")
fi

wait_for() {  # wait_for NAME URL GREP-PATTERN
    local deadline=$((SECONDS + WAIT_SECONDS))
    until curl -fsS "${auth[@]}" "$2" 2>/dev/null | grep -q "$3"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "setup: $1 not ready at $2 after ${WAIT_SECONDS}s" >&2
            exit 1
        fi
        sleep 3
    done
    echo "setup: $1 is ready"
}

wait_for elasticsearch "$ELASTICSEARCH_URL/_cluster/health" '"status":"\(green\|yellow\)"'
wait_for kibana "$KIBANA_URL/api/status" '"level":"available"'

answer=$(curl -sS "${auth[@]}" -X POST "$KIBANA_URL/api/saved_objects/_import?overwrite=true" \
    -H 'kbn-xsrf: iot-collector-setup' \
    --form "file=@${SAVED_OBJECTS}")
# No here-strings: older bash writes them to a temp file, and the Helm job runs
# with a read-only root filesystem.
if ! printf '%s' "$answer" | grep -q '"success":true'; then
    echo "setup: saved objects import failed: $answer" >&2
    exit 1
fi
echo "setup: imported $(printf '%s' "$answer" | grep -o '"successCount":[0-9]*' | cut -d: -f2) saved objects;" \
     "open $KIBANA_URL/app/dashboards"
