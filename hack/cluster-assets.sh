#!/usr/bin/env bash
# Builds the test cluster's tools from the Go module proxy (hack/cluster's
# module: ko, crane, a slim CoreDNS, the pause binary and mkimage) into a
# cache directory outside the repository and prints it. Static binaries
# (CGO_ENABLED=0, -trimpath: the flags ko builds Kvasir's images with, so
# the two share the build cache). A second run with nothing changed does
# nothing.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=cluster/lib.sh
. "$repo/hack/cluster/lib.sh"
BIN=$CACHE_DIR/bin
stamp=$(cat "$repo/hack/cluster/go.mod" "$repo/hack/cluster/go.sum" "$repo"/hack/cluster/*/*.go | sha256sum | cut -c1-16)
if [[ $(cat "$BIN/.stamp" 2>/dev/null) != "$stamp" ]]; then
  log "building ko, crane, CoreDNS, pause and mkimage (minutes the first time)"
  mkdir -p "$BIN"
  (cd "$repo/hack/cluster" && CGO_ENABLED=0 go build -trimpath -o "$BIN/" \
    github.com/google/ko github.com/google/go-containerregistry/cmd/crane ./mkimage ./pause ./coredns)
  echo "$stamp" >"$BIN/.stamp"
fi
echo "$BIN"
