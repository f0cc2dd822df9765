#!/usr/bin/env bash
# Prints the path of a helm binary. Uses `helm` from PATH when there is one;
# otherwise builds the pinned version through the Go module proxy into
# .cache/bin (git-ignored), which takes a few minutes once and is reused after.
# HELM_VERSION overrides the pin; HELM=/path/to/helm skips the lookup.
set -euo pipefail
cd "$(dirname "$0")/.."
HELM_VERSION=${HELM_VERSION:-v3.22.0}
# The Kubernetes minor that release builds of this helm report by default (its
# k8s.io modules are v0.37): without it a `go install` build says v1.20 and
# rejects charts with a newer kubeVersion.
HELM_K8S_MINOR=${HELM_K8S_MINOR:-37}
BUILD_ID="$HELM_VERSION+k8s1.$HELM_K8S_MINOR"

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
if [ -x "$cached" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$BUILD_ID" ]; then
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
if [ -x "$cached" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$BUILD_ID" ]; then
    echo "$cached"
    exit 0
fi
echo "helm.sh: building helm $HELM_VERSION with go install (first run only)" >&2
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$HELM_K8S_MINOR"
done
GOBIN="$bin_dir" go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
echo "$BUILD_ID" >"$stamp"
echo "$cached"
