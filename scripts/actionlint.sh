#!/usr/bin/env bash
# Prints the path of an actionlint binary (the GitHub Actions workflow linter). Uses
# `actionlint` from PATH when there is one; otherwise builds the pinned version
# through the Go module proxy into .cache/bin (git-ignored), once, reused after.
# ACTIONLINT_VERSION overrides the pin; ACTIONLINT=/path/to/actionlint skips the lookup.
set -euo pipefail
cd "$(dirname "$0")/.."
ACTIONLINT_VERSION=${ACTIONLINT_VERSION:-v1.7.12}

if [ -n "${ACTIONLINT:-}" ] && [ -x "${ACTIONLINT}" ]; then
    echo "$ACTIONLINT"
    exit 0
fi
if command -v actionlint >/dev/null 2>&1; then
    command -v actionlint
    exit 0
fi

bin_dir="$PWD/.cache/bin"
cached="$bin_dir/actionlint"
stamp="$bin_dir/.actionlint-version"
if [ -x "$cached" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$ACTIONLINT_VERSION" ]; then
    echo "$cached"
    exit 0
fi
if ! command -v go >/dev/null 2>&1; then
    echo "actionlint.sh: no actionlint on PATH and no Go toolchain to build $ACTIONLINT_VERSION" >&2
    exit 1
fi
mkdir -p "$bin_dir"
# One build at a time: concurrent test sessions wait for the first to finish.
exec 9>"$bin_dir/.actionlint-build.lock"
flock 9
if [ -x "$cached" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$ACTIONLINT_VERSION" ]; then
    echo "$cached"
    exit 0
fi
echo "actionlint.sh: building actionlint $ACTIONLINT_VERSION with go install (first run only)" >&2
GOBIN="$bin_dir" go install -trimpath -ldflags "-s -w" \
    "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION" >&2
echo "$ACTIONLINT_VERSION" >"$stamp"
echo "$cached"
