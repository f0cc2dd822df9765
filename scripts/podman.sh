#!/usr/bin/env bash
# podman with the project's configuration (deploy/podman/containers.conf: runc,
# cgroupfs, no default ulimits), so builds and containers work in CI sandboxes
# without touching the machine's global files. Usage: scripts/podman.sh ARGS...
# Installs podman, runc, mmdebstrap, catatonit and slirp4netns with apt when they are missing and this
# runs as root (scripts/setup.sh calls it with `--install-only`).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/deploy/podman/containers.conf}"

need=()
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v runc >/dev/null 2>&1 || need+=(runc)
command -v mmdebstrap >/dev/null 2>&1 || need+=(mmdebstrap)
# `podman kube play` builds its pause image from catatonit; slirp4netns is the pod
# network that can reach this machine's loopback (tests/deploy/test_kube_play.py).
command -v catatonit >/dev/null 2>&1 || [ -x /usr/libexec/podman/catatonit ] || need+=(catatonit)
command -v slirp4netns >/dev/null 2>&1 || need+=(slirp4netns)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "podman.sh: installing ${need[*]}" >&2
        # Another installer may hold the dpkg lock for a while: wait for it.
        apt-get -o DPkg::Lock::Timeout=300 update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
            --no-install-recommends "${need[@]}" >/dev/null
    else
        echo "podman.sh: ${need[*]} missing (install them to build and run the image)" >&2
        if [ "${1:-}" != --install-only ] && ! command -v podman >/dev/null 2>&1; then
            exit 127
        fi
    fi
fi
[ "${1:-}" = --install-only ] && exit 0
exec podman "$@"
