#!/usr/bin/env bash
# Builds the test cluster's tools from the Go module proxy (hack/cluster's
# module: ko, crane, a slim CoreDNS, the pause binary and mkimage; hack/lws's:
# the LeaderWorkerSet controller, sigs.k8s.io/lws's own manager) into a
# cache directory outside the repository and prints it. Static binaries
# (CGO_ENABLED=0, -trimpath: the flags ko builds Kvasir's images with, so
# the two share the build cache). A second run with nothing changed does
# nothing.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=cluster/lib.sh
. "$repo/hack/cluster/lib.sh"
BIN=$CACHE_DIR/bin
stamp=$(cat "$repo/hack/cluster/go.mod" "$repo/hack/cluster/go.sum" "$repo"/hack/cluster/*/*.go \
  "$repo/hack/lws/go.mod" "$repo/hack/lws/go.sum" | sha256sum | cut -c1-16)
if [[ $(cat "$BIN/.stamp" 2>/dev/null) != "$stamp" ]]; then
  log "building ko, crane, CoreDNS, pause, mkimage and the LeaderWorkerSet controller (minutes the first time)"
  mkdir -p "$BIN/lws"
  (cd "$repo/hack/cluster" && CGO_ENABLED=0 GOWORK=off go build -trimpath -o "$BIN/" \
    github.com/google/ko github.com/google/go-containerregistry/cmd/crane ./mkimage ./pause ./coredns)
  # Named manager: its image's entrypoint is /manager, as LWS's manifests
  # (config/manager/manager.yaml) run it.
  (cd "$repo/hack/lws" && CGO_ENABLED=0 GOWORK=off go build -trimpath -o "$BIN/lws/manager" sigs.k8s.io/lws/cmd)
  echo "$stamp" >"$BIN/.stamp"
fi
echo "$BIN"
