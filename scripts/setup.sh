#!/usr/bin/env bash
# Idempotent set-up: system packages the tests need, the virtual environment, the
# project with its dev and bench extras, and the npm peer used by the benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

need_pkgs=()
command -v coap-client-notls >/dev/null 2>&1 || need_pkgs+=(libcoap3-bin)
command -v nft >/dev/null 2>&1 || need_pkgs+=(nftables)
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
command -v sqlite3 >/dev/null 2>&1 || need_pkgs+=(sqlite3)
# Elasticsearch for the tests: fetched from Maven Central with mvn, run on Java 17.
command -v mvn >/dev/null 2>&1 || need_pkgs+=(maven)
command -v java >/dev/null 2>&1 || need_pkgs+=(openjdk-17-jre-headless)
command -v unzip >/dev/null 2>&1 || need_pkgs+=(unzip)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
# DTLSSocket (tinydtls for aiocoap-client's coaps) has no wheel: pip runs tinydtls'
# autogen.sh (autoreconf) and configure, then compiles it.
command -v autoreconf >/dev/null 2>&1 || need_pkgs+=(autoconf)
command -v automake >/dev/null 2>&1 || need_pkgs+=(automake)
command -v libtoolize >/dev/null 2>&1 || need_pkgs+=(libtool)
command -v gcc >/dev/null 2>&1 || need_pkgs+=(gcc libc6-dev)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing system packages: ${need_pkgs[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
    else
        echo "setup: missing system packages (${need_pkgs[*]}); install them to run every test" >&2
    fi
fi

# podman and friends for `make image` and the image tests (tests/deploy).
bash scripts/podman.sh --install-only

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -e ".[dev,bench]"
# aiocoap-client over coaps (its tinydtls transport) for tests/dtls/test_dtls_aiocoap.py.
# Kept out of the extras so that a failed C build costs that one test, which then fails
# and names this log, and not the whole set-up.
if ! "$VENV/bin/python" -c "from DTLSSocket import dtls" >/dev/null 2>&1; then
    dtls_log="$VENV/dtlssocket-build.log"
    "$VENV/bin/pip" install -q "DTLSSocket>=0.2.3,<0.3" >"$dtls_log" 2>&1 \
        || echo "setup: DTLSSocket (tinydtls for aiocoap-client) did not build; see $dtls_log" >&2
fi

if [ -f bench/peers/node/package.json ] && command -v npm >/dev/null 2>&1; then
    (cd bench/peers/node && npm install --silent --no-audit --no-fund >/dev/null)
fi
# A Java peer under bench/peers: built once with Maven, and again when its source is
# newer than its jar. Arguments: its directory, its jar, its main source, and what to
# say when it does not build.
build_java_peer() {
    local dir=$1 jar=$2 src=$3 missing=$4
    if [ -f "$dir/pom.xml" ] && { [ ! -f "$jar" ] || [ "$src" -nt "$jar" ]; } \
        && command -v mvn >/dev/null 2>&1; then
        (cd "$dir" && mvn -q package >/dev/null 2>&1) || echo "setup: $missing" >&2
    fi
}
# The Californium peer of the benchmarks (plain and DTLS), so its test runs too.
build_java_peer bench/peers/californium bench/peers/californium/target/cf-peer.jar \
    bench/peers/californium/src/main/java/bench/CfPeer.java \
    "the Californium peer did not build; --compare will skip it"
# The Scandium (Californium DTLS) client of the coaps tests.
build_java_peer bench/peers/scandium bench/peers/scandium/target/sc-peer.jar \
    bench/peers/scandium/src/main/java/bench/ScPeer.java \
    "the Scandium peer did not build; its coaps test will skip"
echo "setup: ready ($VENV)"
