#!/usr/bin/env bash
# `make image`: builds localhost/iot-collector:<version> from the Dockerfile with
# podman (daemonless; no Docker engine needed) and prints the image's name last.
#
# The base is the official python:3.11-slim-bookworm when it is present or can be
# pulled. Where no image registry can be reached, a local base of the same Python
# minor is built instead: a minimal Debian bookworm root filesystem made by
# mmdebstrap from the Debian mirror, with a venv at /opt/python first on PATH, so
# `python` and `pip` exist as in the official image (Debian's own python3 refuses
# system-wide pip installs, PEP 668). Both bases are cached in podman's storage;
# later runs reuse them and podman's layer cache.
#
# Environment: IMAGE (the tag to build), PYTHON_IMAGE (use this base, no lookup),
# LOCAL_BASE=1 (skip the official base), DEBIAN_MIRROR.
set -euo pipefail
cd "$(dirname "$0")/.."
podman=(bash scripts/podman.sh)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n 1)
IMAGE=${IMAGE:-localhost/iot-collector:$version}
OFFICIAL=docker.io/library/python:3.11-slim-bookworm
LOCAL=localhost/iot-collector-base:python3.11-bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org}

build_local_base() {
    local tmp
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    echo "image: building the local base $LOCAL with mmdebstrap" >&2
    # Explicit sources: without them mmdebstrap would read them from stdin. The
    # merged-usr hook avoids the usrmerge package (and the perl it pulls in); docs,
    # manuals and translations are left out as in Debian's slim images.
    mmdebstrap --quiet --variant=minbase \
        --include=python3,python3-venv,ca-certificates,passwd \
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --customize-hook='chroot "$1" python3 -m venv /opt/python' \
        --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
        bookworm "$tmp/rootfs.tar" \
        "deb $DEBIAN_MIRROR/debian bookworm main" \
        "deb $DEBIAN_MIRROR/debian bookworm-updates main" \
        "deb $DEBIAN_MIRROR/debian-security bookworm-security main" </dev/null >&2
    "${podman[@]}" import \
        --change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        "$tmp/rootfs.tar" "$LOCAL" >/dev/null
}

if [ -z "${PYTHON_IMAGE:-}" ]; then
    if [ "${LOCAL_BASE:-0}" != 1 ] && { "${podman[@]}" image exists "$OFFICIAL" \
        || "${podman[@]}" pull -q "$OFFICIAL" >/dev/null 2>&1; }; then
        PYTHON_IMAGE=$OFFICIAL
    else
        # One base build at a time: concurrent test sessions wait for the first.
        mkdir -p .cache
        exec 9>.cache/.image-base.lock
        flock 9
        "${podman[@]}" image exists "$LOCAL" || build_local_base
        flock -u 9
        PYTHON_IMAGE=$LOCAL
    fi
fi

# pip verifies PyPI against the system bundle (PIP_CERT in the Dockerfile's build
# stage); mounting this machine's bundle there lets the build work behind a TLS
# proxy that the machine trusts. Host networking reaches PyPI and the Debian
# mirror as the machine does. --format docker keeps HEALTHCHECK (OCI drops it).
ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
mounts=()
[ -f "$ca" ] && mounts+=(-v "$ca:/etc/ssl/certs/ca-certificates.crt:ro")
echo "image: building $IMAGE on $PYTHON_IMAGE" >&2
"${podman[@]}" build --network host --format docker "${mounts[@]}" \
    --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" -t "$IMAGE" -f Dockerfile . >&2
echo "$IMAGE"
