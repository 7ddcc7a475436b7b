#!/usr/bin/env bash
# Builds the peer engine of the tests (test/peer), llm-d-inference-sim, a
# vLLM-compatible simulator written outside this project, from the Go module
# proxy (hack/peer's module pins its exact version) into a cache directory
# outside the repository, and prints the binary's path. A static binary
# (CGO_ENABLED=0, -trimpath). A second run with hack/peer's go.mod and go.sum
# unchanged does nothing; the binary is replaced atomically, so a concurrent
# run or a reader never sees half of one.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
mod=$repo/hack/peer
pkg=github.com/llm-d/llm-d-inference-sim
version=$(awk -v m="$pkg" '$1 == m { print $2; exit }' "$mod/go.mod")
[[ -n $version ]] || { echo "hack/peer/go.mod does not require $pkg" >&2; exit 1; }
DIR=${KVASIR_PEER_ASSETS:-${XDG_CACHE_HOME:-$HOME/.cache}/kvasir/peer}
bin=$DIR/llm-d-inference-sim-$version
stampfile=$DIR/.llm-d-inference-sim-$version.stamp
stamp=$(cat "$mod/go.mod" "$mod/go.sum" | sha256sum | cut -c1-16)
if [[ ! -x $bin || $(cat "$stampfile" 2>/dev/null) != "$stamp" ]]; then
  echo "building $pkg $version (minutes the first time)" >&2
  mkdir -p "$DIR"
  tmp=$(mktemp "$DIR/.build.XXXXXX")
  trap 'rm -f "$tmp" "$tmp.stamp"' EXIT
  (cd "$mod" && CGO_ENABLED=0 GOWORK=off go build -trimpath -o "$tmp" "$pkg/cmd/llm-d-inference-sim")
  echo "$stamp" >"$tmp.stamp"
  # The binary first: a crash between the two leaves an old stamp, and the
  # next run builds again.
  mv -f "$tmp" "$bin"
  mv -f "$tmp.stamp" "$stampfile"
fi
echo "$bin"
