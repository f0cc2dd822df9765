#!/usr/bin/env bash
# Prints the path of a helm binary. Uses `helm` from PATH when there is one;
# otherwise builds the pinned version through the Go module proxy into
# .cache/bin (git-ignored), which takes a few minutes once and is reused after.
# HELM_VERSION overrides the pin; HELM=/path/to/helm skips the lookup.
set -euo pipefail
cd "$(dirname "$0")/.."
HELM_VERSION=${HELM_VERSION:-v3.22.0}

if [ -n "${HELM:-}" ] && [ -x "${HELM}" ]; then
    echo "$HELM"
    exit 0
fi
if command -v helm >/dev/null 2>&1; then
    command -v helm
    exit 0
fi

bin_dir="$PWD/.cache/bin"
cached="$bin_dir/helm"
stamp="$bin_dir/.helm-version"
if [ -x "$cached" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$HELM_VERSION" ]; then
    echo "$cached"
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    echo "helm.sh: no helm on PATH and no Go toolchain to build helm $HELM_VERSION" >&2
    exit 1
fi
mkdir -p "$bin_dir"
# One build at a time: concurrent test sessions wait for the first to finish.
exec 9>"$bin_dir/.helm-build.lock"
flock 9
if [ -x "$cached" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$HELM_VERSION" ]; then
    echo "$cached"
    exit 0
fi
echo "helm.sh: building helm $HELM_VERSION with go install (first run only)" >&2
GOBIN="$bin_dir" GOFLAGS="${GOFLAGS:-} -trimpath" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
echo "$HELM_VERSION" >"$stamp"
echo "$cached"
