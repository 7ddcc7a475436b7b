#!/usr/bin/env bash
# Builds the test control plane (kube-apiserver and etcd for envtest, plus
# kube-controller-manager and kubectl) and the node binaries of the real test
# cluster (kubelet, kube-scheduler, kube-proxy) from the Go module proxy into a
# cache directory outside the repository, and prints that directory (use it
# as KUBEBUILDER_ASSETS). Nothing prebuilt is downloaded. A second run with
# the binaries in place does nothing.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-1.35.4}
ETCD_VERSION=${ETCD_VERSION:-3.6.5}
DEST=${KVASIR_ENVTEST_ASSETS:-${XDG_CACHE_HOME:-$HOME/.cache}/kvasir/envtest/k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}}

kube_cmds=()
for b in kube-apiserver kube-controller-manager kubectl kubelet kube-scheduler kube-proxy; do
  [[ -x "$DEST/$b" ]] || kube_cmds+=("k8s.io/kubernetes/cmd/$b")
done
if [[ ${#kube_cmds[@]} -eq 0 && -x "$DEST/etcd" ]]; then
  echo "$DEST"
  exit 0
fi
mkdir -p "$DEST"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
minor=${K8S_VERSION#*.}   # 35.4
staging="v0.${minor}"     # v0.35.4

if [[ ${#kube_cmds[@]} -gt 0 ]]; then
  echo "building ${kube_cmds[*]##*/} v${K8S_VERSION} (minutes the first time)" >&2
  mkdir "$work/apiserver" && cd "$work/apiserver"
  go mod init kvasir.local/envtest-apiserver >/dev/null 2>&1
  gomod=$(go mod download -json "k8s.io/kubernetes@v${K8S_VERSION}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  [[ -f "$gomod" ]] || { echo "cannot read k8s.io/kubernetes@v${K8S_VERSION}'s go.mod" >&2; exit 1; }
  {
    echo "require k8s.io/kubernetes v${K8S_VERSION}"
    # Every staging module k8s.io/kubernetes replaces with its own tree is
    # taken from the proxy at the matching v0 version instead.
    grep -oE '^[[:space:]]*k8s\.io/[A-Za-z0-9._-]+ => \./staging/' "$gomod" | awk '{print $1}' | sort -u |
      while read -r m; do echo "replace $m => $m ${staging}"; done
  } >>go.mod
  GOFLAGS=-mod=mod go build -o "$DEST/" -ldflags "\
-X k8s.io/component-base/version.gitVersion=v${K8S_VERSION} \
-X k8s.io/component-base/version.gitMajor=1 \
-X k8s.io/component-base/version.gitMinor=${minor%%.*}" "${kube_cmds[@]}"
fi

if [[ ! -x "$DEST/etcd" ]]; then
  echo "building etcd v${ETCD_VERSION}" >&2
  mkdir "$work/etcd" && cd "$work/etcd"
  go mod init kvasir.local/envtest-etcd >/dev/null 2>&1
  echo "require go.etcd.io/etcd/server/v3 v${ETCD_VERSION}" >>go.mod
  GOFLAGS=-mod=mod go build -o "$DEST/etcd" go.etcd.io/etcd/server/v3
fi
echo "$DEST"
