#!/usr/bin/env bash
# Users of the in-chart Elasticsearch (security on), set once it answers and again
# on every upgrade (idempotent): the kibana_system password Kibana signs in with,
# the collector's own user, whose role may only install its index template, check
# cluster health and create documents and indices under its prefix, and the
# retention CronJob's user, which may only list and delete those indices.
# No here-strings or heredocs: the job's root filesystem is read-only.
set -euo pipefail
ES=${ELASTICSEARCH_URL:?}
WAIT_SECONDS=${WAIT_SECONDS:-600}
# curl ARGS as `elastic`; on an error status, prints the answer and fails.
es() {
    local out
    out=$(curl -sS -u "elastic:$ELASTIC_PASSWORD" -H 'Content-Type: application/json' \
        -w '\n%{http_code}' "$@") || return 1
    if [ "${out##*$'\n'}" -ge 300 ]; then
        echo "setup: ${*: -1} -> ${out##*$'\n'}: ${out%$'\n'*}" >&2
        return 1
    fi
    printf '%s\n' "${out%$'\n'*}"
}

deadline=$((SECONDS + WAIT_SECONDS))
until es "$ES/_cluster/health" 2>/dev/null | grep -q '"status":"\(green\|yellow\)"'; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "setup: Elasticsearch not ready at $ES after ${WAIT_SECONDS}s" >&2
        exit 1
    fi
    sleep 3
done

es -X POST "$ES/_security/user/kibana_system/_password" \
    -d "{\"password\":\"$KIBANA_PASSWORD\"}" >/dev/null
echo "setup: kibana_system password set"

if [ -n "${COLLECTOR_USERNAME:-}" ] && [ -n "${COLLECTOR_PASSWORD:-}" ]; then
    es -X PUT "$ES/_security/role/iot_collector_writer" -d "{
        \"cluster\": [\"monitor\", \"manage_index_templates\"],
        \"indices\": [{\"names\": [\"$INDEX_PREFIX-*\"],
                       \"privileges\": [\"create_doc\", \"create_index\", \"auto_configure\",
                                        \"view_index_metadata\"]}]}" >/dev/null
    es -X PUT "$ES/_security/user/$COLLECTOR_USERNAME" \
        -d "{\"password\":\"$COLLECTOR_PASSWORD\",\"roles\":[\"iot_collector_writer\"]}" >/dev/null
    echo "setup: user $COLLECTOR_USERNAME may write $INDEX_PREFIX-*"
fi

if [ -n "${RETENTION_USERNAME:-}" ] && [ -n "${RETENTION_PASSWORD:-}" ]; then
    es -X PUT "$ES/_security/role/iot_collector_retention" -d "{
        \"cluster\": [\"monitor\"],
        \"indices\": [{\"names\": [\"$INDEX_PREFIX-*\"],
                       \"privileges\": [\"monitor\", \"view_index_metadata\", \"delete_index\"]}]}" \
        >/dev/null
    es -X PUT "$ES/_security/user/$RETENTION_USERNAME" \
        -d "{\"password\":\"$RETENTION_PASSWORD\",\"roles\":[\"iot_collector_retention\"]}" >/dev/null
    echo "setup: user $RETENTION_USERNAME may delete $INDEX_PREFIX-* indices"
fi
