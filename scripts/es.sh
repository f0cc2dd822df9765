#!/usr/bin/env bash
# A real single-node Elasticsearch for development, tests and CI.
#
#   bash scripts/es.sh start|stop|status|url
#   ES_NODES=3 bash scripts/es.sh start          # a three-node cluster
#   bash scripts/es.sh node-stop|node-start|node-kill N   # one node of a cluster (1..3)
#
# The server is the `integ-test-zip` distribution from Maven Central (core server, HTTP
# transport, x-pack security; no bundled JDK, no ingest/ILM/data streams), fetched once
# with Maven into .cache/es/ (git-ignored) and unzipped there. Each instance lives in its
# own state directory (config, data, logs, pidfile), owned by a dedicated system user
# because Elasticsearch refuses to run as root and CI runs as root. It binds 127.0.0.1
# only. `start` waits for yellow/green health and prints the URL as the last line of
# stdout (progress goes to stderr), so `ES_URL=$(bash scripts/es.sh start | tail -1)`
# works. `start` on a running instance just prints its URL; `stop` kills the pidfile's
# process only and removes the state directory.
#
# Environment (all optional):
#   ES_PORT        HTTP port (default 9200; 0 picks a free one, see its URL's port); for a
#                  cluster, the first node's port, which names the cluster afterwards
#   ES_NODES       1 (default) or 3: a cluster of three master-eligible data nodes, each
#                  with its own HTTP and transport port on 127.0.0.1, its own state in
#                  $ES_STATE_DIR/node-N and ES_HEAP of heap; `start` prints the three
#                  URLs joined by commas (what --es-url accepts)
#   ES_STATE_DIR   instance directory (default ${TMPDIR:-/tmp}/iot-collector-es-<port>)
#   ES_SECURITY=1  x-pack security on (HTTP basic auth, no TLS); needs ES_PASSWORD,
#                  set as the `elastic` user's bootstrap password via the keystore
#   ES_PASSWORD    bootstrap password of the `elastic` user (with ES_SECURITY=1)
#   ES_HEAP        JVM heap (default 512m)
#   ES_KEEP_STATE=1  `stop` keeps the data so that a later `start` finds it again
#   ES_VERSION     server version (default 8.19.21: the client pinned is 8.x)
#   ES_USER        system user that runs the server when invoked as root (default iotes)
#   ES_START_TIMEOUT  seconds to wait for health (default 120)
#   ES_JAVA_HOME   JDK 17+ (default: the `java` on PATH)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ES_VERSION=${ES_VERSION:-8.19.21}
CACHE=${ES_CACHE_DIR:-$ROOT/.cache/es}
ES_DIST=$CACHE/elasticsearch-$ES_VERSION
ES_USER=${ES_USER:-iotes}
ES_HEAP=${ES_HEAP:-512m}
ES_START_TIMEOUT=${ES_START_TIMEOUT:-120}

log() { echo "es.sh: $*" >&2; }
die() {
    echo "es.sh: $*" >&2
    exit 1
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

resolve_instance() {
    PORT=${ES_PORT:-9200}
    if [ "$PORT" = 0 ]; then
        [ "${1:-}" = start ] || die "ES_PORT=0 only makes sense for start; pass the port it printed"
        PORT=$(free_port)
    fi
    case $PORT in '' | *[!0-9]*) die "ES_PORT must be a number, got '$PORT'" ;; esac
    STATE=${ES_STATE_DIR:-${TMPDIR:-/tmp}/iot-collector-es-$PORT}
    SCHEME=http
    # A cluster remembers its nodes' ports in cluster.env (written by `start`).
    NODES=${ES_NODES:-1}
    if [ -f "$STATE/cluster.env" ]; then
        # shellcheck disable=SC1091
        . "$STATE/cluster.env"
        NODES=${#HTTP_PORTS[@]}
    fi
    case $NODES in 1 | 3) ;; *) die "ES_NODES must be 1 or 3, got '$NODES'" ;; esac
    if [ "$NODES" = 1 ]; then
        HTTP_PORTS=("$PORT")
        select_node 1
        URL=$NODE_URL
    else
        URL=""
        for p in "${HTTP_PORTS[@]:-}"; do URL="${URL:+$URL,}$SCHEME://127.0.0.1:$p"; done
    fi
}

# Sets the current node (1-based): NSTATE, NPORT, NTPORT, PIDFILE, NODE_URL, NODE_NAME.
select_node() {
    local i=$1
    if [ "$NODES" = 1 ]; then
        NSTATE=$STATE
        NPORT=$PORT
        NTPORT=9300-9399
    else
        NSTATE=$STATE/node-$i
        NPORT=${HTTP_PORTS[$((i - 1))]}
        NTPORT=${TRANSPORT_PORTS[$((i - 1))]}
    fi
    NODE_NAME=es-$NPORT
    PIDFILE=$NSTATE/es.pid
    NODE_URL="$SCHEME://127.0.0.1:$NPORT"
}

running_pid() {
    # The pidfile's process, if it is alive and is the Elasticsearch of this state dir.
    [ -f "$PIDFILE" ] || return 1
    local pid
    pid=$(cat "$PIDFILE" 2>/dev/null || true)
    case $pid in '' | *[!0-9]*) return 1 ;; esac
    [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "java.io.tmpdir=$NSTATE/tmp" || return 1
    echo "$pid"
}

as_es_user() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u "$ES_USER" -- "$@"
    else
        "$@"
    fi
}

ensure_user() {
    [ "$(id -u)" = 0 ] || return 0
    if ! getent passwd "$ES_USER" >/dev/null; then
        log "creating system user $ES_USER (Elasticsearch refuses to run as root)"
        useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
            "$ES_USER" 2>/dev/null || getent passwd "$ES_USER" >/dev/null ||
            die "cannot create system user $ES_USER"
    fi
}

ensure_java() {
    if [ -z "${ES_JAVA_HOME:-}" ]; then
        local java
        java=$(command -v java || true)
        [ -n "$java" ] || die "no java on PATH: install a JDK 17+ (apt-get install openjdk-17-jre-headless) or set ES_JAVA_HOME"
        ES_JAVA_HOME=$(dirname "$(dirname "$(readlink -f "$java")")")
    fi
    [ -x "$ES_JAVA_HOME/bin/java" ] || die "ES_JAVA_HOME=$ES_JAVA_HOME has no bin/java"
    export ES_JAVA_HOME
}

ensure_dist() {
    mkdir -p "$CACHE"
    # One download and unpack at a time: several test runs may start at once.
    exec 9>"$CACHE/.lock"
    flock 9
    if [ ! -x "$ES_DIST/bin/elasticsearch" ]; then
        local zip=$CACHE/elasticsearch-$ES_VERSION.zip
        if [ ! -s "$zip" ]; then
            command -v mvn >/dev/null || die "mvn not found: install maven (apt-get install maven) to fetch Elasticsearch"
            log "downloading Elasticsearch $ES_VERSION (integ-test-zip) from Maven Central into $CACHE"
            mvn -q -B dependency:copy \
                -Dartifact="org.elasticsearch.distribution.integ-test-zip:elasticsearch:$ES_VERSION:zip" \
                -DoutputDirectory="$CACHE" >&2 || die "maven could not fetch elasticsearch $ES_VERSION"
        fi
        log "unpacking $zip"
        local tmp
        tmp=$(mktemp -d "$CACHE/unzip.XXXXXX")
        unzip -q "$zip" -d "$tmp" || die "cannot unzip $zip"
        # The server runs as another user: it must be able to read the distribution.
        chmod -R a+rX "$tmp"
        mv -T "$tmp/elasticsearch-$ES_VERSION" "$ES_DIST"
        rm -rf "$tmp"
        [ -x "$ES_DIST/bin/elasticsearch" ] || die "unpacked distribution lacks bin/elasticsearch"
    fi
    # A checkout under a private directory (/root in CI) is out of the server user's
    # reach: run a world-readable copy instead.
    if [ "$(id -u)" = 0 ] && ! runuser -u "$ES_USER" -- test -r "$ES_DIST/lib" 2>/dev/null; then
        local copy=/var/tmp/iot-collector-es/elasticsearch-$ES_VERSION
        if [ ! -x "$copy/bin/elasticsearch" ]; then
            log "copying the distribution to $copy (the checkout is not readable by $ES_USER)"
            mkdir -p "$(dirname "$copy")"
            rm -rf "$copy.tmp"
            cp -a "$ES_DIST" "$copy.tmp"
            chmod -R a+rX "$copy.tmp"
            chmod a+rx /var/tmp/iot-collector-es
            mv -T "$copy.tmp" "$copy"
        fi
        ES_DIST=$copy
    fi
    flock -u 9
}

write_config() {
    local STATE=$NSTATE # this node's directory
    mkdir -p "$STATE/data" "$STATE/logs" "$STATE/tmp"
    rm -rf "$STATE/config"
    cp -r "$ES_DIST/config" "$STATE/config"
    # The stock jvm.options writes gc logs and crash files into the working directory.
    sed -i -e "s|file=gc.log|file=$STATE/logs/gc.log|" \
        -e "s|ErrorFile=hs_err_pid|ErrorFile=$STATE/logs/hs_err_pid|" "$STATE/config/jvm.options"
    echo "-XX:HeapDumpPath=$STATE/logs" >"$STATE/config/jvm.options.d/heapdump.options"
    local security=false
    [ "${ES_SECURITY:-0}" = 1 ] && security=true
    cat >"$STATE/config/elasticsearch.yml" <<EOF
cluster.name: iot-collector-$PORT
node.name: $NODE_NAME
path.data: $STATE/data
path.logs: $STATE/logs
network.host: 127.0.0.1
http.port: $NPORT
transport.port: $NTPORT
$(discovery_settings)
xpack.security.enabled: $security
xpack.security.http.ssl.enabled: false
xpack.security.transport.ssl.enabled: false
# Tests share a disk with everything else: never refuse shards for a full-ish disk.
cluster.routing.allocation.disk.threshold_enabled: false
action.destructive_requires_name: false
EOF
    if [ "$security" = true ]; then
        [ -n "${ES_PASSWORD:-}" ] || die "ES_SECURITY=1 needs ES_PASSWORD (the elastic user's bootstrap password)"
        ES_PATH_CONF=$STATE/config "$ES_DIST/bin/elasticsearch-keystore" create >/dev/null 2>&1 || true
        printf '%s' "$ES_PASSWORD" | ES_PATH_CONF=$STATE/config \
            "$ES_DIST/bin/elasticsearch-keystore" add -x -f bootstrap.password >/dev/null ||
            die "cannot write the bootstrap password into the keystore"
    fi
    [ "$(id -u)" = 0 ] && chown -R "$ES_USER:" "$STATE"
    return 0
}

discovery_settings() {
    if [ "$NODES" = 1 ]; then
        echo "discovery.type: single-node"
        return
    fi
    local seeds="" masters="" p
    for p in "${TRANSPORT_PORTS[@]}"; do seeds="${seeds:+$seeds, }\"127.0.0.1:$p\""; done
    for p in "${HTTP_PORTS[@]}"; do masters="${masters:+$masters, }\"es-$p\""; done
    echo "discovery.seed_hosts: [$seeds]"
    # Read only when the cluster forms for the first time; later starts ignore it.
    echo "cluster.initial_master_nodes: [$masters]"
}

health() {
    local auth=()
    [ "${ES_SECURITY:-0}" = 1 ] && auth=(-u "elastic:$ES_PASSWORD")
    curl -s -m 3 "${auth[@]}" \
        "${HEALTH_URL:-$NODE_URL}/_cluster/health?wait_for_status=yellow&wait_for_nodes=${WAIT_NODES:-$NODES}&timeout=2s" \
        2>/dev/null | grep -Eq '"status":"(green|yellow)".*"timed_out":false|"timed_out":false.*"status":"(green|yellow)"'
}

cmd_start() {
    resolve_instance start
    if [ "$NODES" = 3 ] && [ ! -f "$STATE/cluster.env" ]; then
        # Ports: the given HTTP port (or a free one) for node 1, free ones for the rest.
        HTTP_PORTS=("$PORT" "$(free_port)" "$(free_port)")
        TRANSPORT_PORTS=("$(free_port)" "$(free_port)" "$(free_port)")
        mkdir -p "$STATE"
        printf 'HTTP_PORTS=(%s)\nTRANSPORT_PORTS=(%s)\n' "${HTTP_PORTS[*]}" "${TRANSPORT_PORTS[*]}" \
            >"$STATE/cluster.env"
        ES_PORT=$PORT ES_STATE_DIR=$STATE
        resolve_instance start
    fi
    ensure_java
    ensure_user
    ensure_dist
    local i pids=() failed=0
    for i in $(seq 1 "$NODES"); do
        select_node "$i"
        start_node &
        pids+=($!)
    done
    for i in "${pids[@]}"; do wait "$i" || failed=1; done
    [ "$failed" = 0 ] || die "Elasticsearch failed to start (log above)"
    if [ "$NODES" = 3 ]; then
        select_node 1
        HEALTH_URL=$NODE_URL wait_health "cluster of 3 at $URL"
    fi
    echo "$URL"
}

# Start the current node (select_node) unless it runs; wait until it is healthy.
start_node() {
    if pid=$(running_pid); then
        log "$NODE_NAME already running (pid $pid)"
        return 0
    fi
    if port_in_use "$NPORT"; then
        die "port $NPORT on 127.0.0.1 is already taken by another process; choose another with ES_PORT"
    fi
    if [ "$(id -u)" = 0 ]; then
        # The state directory's parents must be traversable by the server's user.
        mkdir -p "$NSTATE"
        [ "$NSTATE" = "$STATE" ] || chown "$ES_USER:" "$STATE"
        runuser -u "$ES_USER" -- test -x "$NSTATE" ||
            die "$ES_USER cannot reach $NSTATE (a parent directory is not world-executable)"
    fi
    write_config
    log "starting Elasticsearch $ES_VERSION $NODE_NAME on $NODE_URL (state in $NSTATE, heap $ES_HEAP)"
    (
        cd "$NSTATE"
        as_es_user env ES_JAVA_HOME="$ES_JAVA_HOME" ES_PATH_CONF="$NSTATE/config" \
            ES_TMPDIR="$NSTATE/tmp" ES_JAVA_OPTS="-Xms$ES_HEAP -Xmx$ES_HEAP ${ES_JAVA_OPTS:-}" \
            "$ES_DIST/bin/elasticsearch" -d -p "$PIDFILE" >"$NSTATE/logs/console.log" 2>&1
    ) || {
        tail -n 30 "$NSTATE/logs/console.log" "$NSTATE/logs/iot-collector-$PORT.log" 2>/dev/null >&2 || true
        die "Elasticsearch $NODE_NAME failed to start (log above)"
    }
    # A cluster node alone is not healthy until a master is elected: the cluster's
    # health is waited for once all nodes run.
    if [ "$NODES" = 1 ]; then
        wait_health "pid $(cat "$PIDFILE")"
    else
        log "$NODE_NAME started (pid $(cat "$PIDFILE"))"
    fi
}

wait_health() {
    local deadline=$((SECONDS + ES_START_TIMEOUT))
    until health; do
        if [ $SECONDS -ge $deadline ] || ! running_pid >/dev/null; then
            tail -n 40 "$NSTATE/logs/iot-collector-$PORT.log" "$NSTATE/logs/console.log" 2>/dev/null >&2 || true
            die "Elasticsearch at ${HEALTH_URL:-$NODE_URL} did not become healthy within ${ES_START_TIMEOUT}s (log tail above)"
        fi
        sleep 0.5
    done
    log "ready ($1)"
}

cmd_stop() {
    resolve_instance stop
    local i
    for i in $(seq 1 "$NODES"); do
        select_node "$i"
        stop_node TERM
    done
    if [ "${ES_KEEP_STATE:-0}" != 1 ] && [ -d "$STATE" ]; then
        rm -rf "$STATE"
    fi
}

# Stop the current node: SIGTERM (then SIGKILL after 30 s), or SIGKILL at once.
stop_node() {
    local pid
    if pid=$(running_pid); then
        log "stopping $NODE_NAME (pid $pid, SIG$1)"
        kill -"$1" "$pid" 2>/dev/null || true
        for _ in $(seq 1 120); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid did not exit after 30 s: killing it"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
        fi
    else
        log "$NODE_NAME not running"
    fi
    rm -f "$PIDFILE"
}

# node-stop|node-start|node-kill N: one node of a running cluster (rolling restarts,
# fault tests). Its data stays; node-start waits until the cluster sees 3 nodes.
cmd_node() {
    local action=$1 n=${2:-}
    resolve_instance node
    [ "$NODES" = 3 ] || die "node-$action needs a cluster (ES_NODES=3 start, then ES_PORT=<first port>)"
    case $n in 1 | 2 | 3) ;; *) die "node-$action needs a node number 1..3, got '$n'" ;; esac
    select_node "$n"
    case $action in
    stop) stop_node TERM ;;
    kill) stop_node KILL ;;
    start)
        ensure_java
        ensure_user
        ensure_dist
        start_node
        wait_health "$NODE_NAME back in the cluster"
        ;;
    esac
}

cmd_status() {
    resolve_instance status
    select_node 1
    if pid=$(running_pid); then
        if health; then
            echo "running (pid $pid) at $URL"
        else
            echo "running (pid $pid) at $URL, not healthy yet"
        fi
    else
        echo "not running (port $PORT)"
        return 3
    fi
}

cmd_url() {
    resolve_instance url
    local i
    for i in $(seq 1 "$NODES"); do
        select_node "$i"
        # A cluster with one node down (a rolling restart) still has its URLs.
        if running_pid >/dev/null; then
            echo "$URL"
            return 0
        fi
    done
    die "not running on port $PORT"
}

main() {
    case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    url) cmd_url ;;
    node-stop) cmd_node stop "${2:-}" ;;
    node-start) cmd_node start "${2:-}" ;;
    node-kill) cmd_node kill "${2:-}" ;;
    *) die "usage: es.sh start|stop|status|url|node-stop N|node-start N|node-kill N (env: ES_PORT ES_NODES ES_STATE_DIR ES_SECURITY ES_PASSWORD ES_HEAP ES_KEEP_STATE)" ;;
    esac
}

# One line, read whole before it runs: editing this file under a running `start`
# cannot make bash read a half-changed script.
main "$@"; exit $?
