#!/usr/bin/env bash
# Tears the test cluster of hack/cluster-up.sh down completely: its pods
# (through the kubelet, so that the CNI plugin releases their network),
# every daemon it started (by recorded PID), containers left behind, the
# kube-proxy's chains, the guard chains, the bridge, network namespaces,
# mounts, cgroups and state directories; ip_forward and
# bridge-nf-call-iptables get their old values. Caches (binaries, the
# registry's storage) stay. Safe to run at any time; exits non-zero and
# names what is left if anything is.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=cluster/lib.sh
. "$repo/hack/cluster/lib.sh"
[[ $(id -u) == 0 ]] || die "needs root"

K8S=${KVASIR_ENVTEST_ASSETS:-$("$repo/hack/envtest-assets.sh" 2>/dev/null)}
kubectl() { "$K8S/kubectl" --kubeconfig "$KUBECONFIG_FILE" --request-timeout=5s "$@"; }

# stop NAME: SIGTERM, then SIGKILL after 10 s.
stop() {
  local pid i
  pid=$(pid_of "$1") || { rm -f "$PID_DIR/$1.pid"; return 0; }
  kill "$pid" 2>/dev/null
  for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null
  rm -f "$PID_DIR/$1.pid"
  log "stopped $1 (pid $pid)"
}
ctrk() { ctr --address "$SOCK" --namespace k8s.io "$@"; }

# 1. Pods, through the kubelet: nothing recreates them once the controller
# manager and the scheduler are gone.
stop kube-controller-manager
stop kube-scheduler
if pid_of kubelet >/dev/null && kubectl get --raw /readyz >/dev/null 2>&1; then
  kubectl delete pods --all --all-namespaces --grace-period=0 --force --wait=false >/dev/null 2>&1
  for ((i = 0; i < 60; i++)); do
    [[ -z $(ctrk tasks ls -q 2>/dev/null) ]] && break
    sleep 1
  done
  # The kubelet tears a sandbox's network down when it stops the sandbox.
  for ((i = 0; i < 30; i++)); do
    [[ -z $(ip -o link show master "$BRIDGE" 2>/dev/null) ]] && break
    sleep 1
  done
fi
stop kubelet
stop kube-proxy

# 2. Whatever containers the kubelet did not stop.
if [[ -S $SOCK ]]; then
  for t in $(ctrk tasks ls -q 2>/dev/null); do
    ctrk tasks kill -s SIGKILL "$t" >/dev/null 2>&1
  done
  for ((i = 0; i < 50; i++)); do
    [[ -z $(ctrk tasks ls 2>/dev/null | awk 'NR>1 && $3!="STOPPED"') ]] && break
    sleep 0.1
  done
  for t in $(ctrk tasks ls -q 2>/dev/null); do ctrk tasks rm -f "$t" >/dev/null 2>&1; done
  for c in $(ctrk containers ls -q 2>/dev/null); do ctrk containers rm "$c" >/dev/null 2>&1; done
fi
stop containerd
# Shims outlive containerd; each names the socket it served.
pkill -9 -f "containerd-shim.* -address $SOCK" 2>/dev/null
stop kube-apiserver
stop etcd
stop registry

# 3. Netfilter: kube-proxy's and the kubelet's chains (the guard goes at
# the end, in step 6).
# The KUBE-* chains (kubelet, kube-proxy) are removed only when this
# cluster made them: hack/cluster-up.sh refuses to start on a machine that
# has some already.
if [[ -f $CLUSTER_DIR/kube-proxy.yaml ]]; then
  [[ -x $K8S/kube-proxy ]] && "$K8S/kube-proxy" --cleanup >/dev/null 2>&1
  for ipt in iptables ip6tables; do
    for table in filter nat mangle; do
      chains=$($ipt -t "$table" -S 2>/dev/null | awk '$1=="-N" && $2 ~ /^KUBE-/ {print $2}')
      for chain in $chains; do
        $ipt -t "$table" -S 2>/dev/null | grep -E -- "-j $chain( |\$)" | grep -v "^-A $chain " |
          while read -r rule; do eval "$ipt -t $table ${rule/-A /-D }" 2>/dev/null; done
      done
      for chain in $chains; do $ipt -t "$table" -F "$chain" 2>/dev/null; done
      for chain in $chains; do $ipt -t "$table" -X "$chain" 2>/dev/null; done
    done
  done
fi
conntrack -D -s "$CLUSTER_CIDR" >/dev/null 2>&1
conntrack -D -d "$SERVICE_CIDR" >/dev/null 2>&1

# Whatever still runs in the kubelet's cgroups (a container whose shim was
# killed) is killed: nothing of the cluster may outlive the guard.
for ((i = 0; i < 50; i++)); do
  [[ -f $CLUSTER_DIR/kubelet.yaml ]] || break # only where this cluster ran a kubelet
  procs=$(cat /sys/fs/cgroup/*/kubepods/cgroup.procs /sys/fs/cgroup/*/kubepods/*/cgroup.procs \
    /sys/fs/cgroup/*/kubepods/*/*/cgroup.procs /sys/fs/cgroup/*/kubepods/*/*/*/cgroup.procs 2>/dev/null | sort -u)
  [[ -z $procs ]] && break
  # shellcheck disable=SC2086
  kill -9 $procs 2>/dev/null
  sleep 0.1
done

# 4. Mounts (deepest first), network namespaces, links.
for dir in "$RUN_DIR" "$CLUSTER_DIR"; do
  awk -v d="$dir" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null || umount -f "$m" 2>/dev/null; done
done
for l in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
  ip link del "$l" 2>/dev/null
done
ip link del "$BRIDGE" 2>/dev/null

# 5. Kernel settings back as they were.
if [[ -f $CLUSTER_DIR/sysctl.orig ]]; then
  while read -r s v; do
    [[ $(</proc/sys/$s) == "$v" ]] || echo "$v" >"/proc/sys/$s" || log "cannot put $s back to $v"
  done <"$CLUSTER_DIR/sysctl.orig"
fi

# 6. cgroups the kubelet made (cgroupfs driver: kubepods under each
# hierarchy), deepest first; a cgroup empties once its processes are gone.
if [[ -f $CLUSTER_DIR/kubelet.yaml ]]; then
  for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    [[ -d $h/kubepods ]] && find "$h/kubepods" -depth -type d -exec rmdir {} + 2>/dev/null
  done
fi

# The guard goes last of the network state, once nothing of the cluster
# runs and forwarding is back off.
while iptables -t mangle -D POSTROUTING -j "$GUARD" 2>/dev/null; do :; done
while iptables -t mangle -D PREROUTING -j "$GUARD_IN" 2>/dev/null; do :; done
iptables -t mangle -F "$GUARD" 2>/dev/null && iptables -t mangle -X "$GUARD"
iptables -t mangle -F "$GUARD_IN" 2>/dev/null && iptables -t mangle -X "$GUARD_IN"

# 7. Files.
if [[ -d /var/log/containers ]]; then
  find /var/log/containers -maxdepth 1 -type l -lname "$CLUSTER_DIR/*" -delete 2>/dev/null
  [[ -f $CLUSTER_DIR/created-var-log-containers ]] && rmdir /var/log/containers 2>/dev/null
fi
[[ -f $CLUSTER_DIR/created-run-containerd ]] && rm -rf /run/containerd
# Never through a mount that is still there (a bind mount of a host
# directory under the kubelet's root): then the state stays, and step 8 says so.
if grep -qE " ($CLUSTER_DIR|$RUN_DIR)[/ ]" /proc/self/mountinfo; then
  log "mounts are left under $CLUSTER_DIR or $RUN_DIR: not removing them"
else
  rm -rf --one-file-system "$RUN_DIR" "$CLUSTER_DIR"
fi

# 8. What is left, if anything.
left=()
pgrep -f -- "$CLUSTER_DIR|$RUN_DIR" >/dev/null && left+=("processes: $(pgrep -f -- "$CLUSTER_DIR|$RUN_DIR" | tr '\n' ' ')")
grep -qE " ($CLUSTER_DIR|$RUN_DIR)[/ ]" /proc/self/mountinfo && left+=("mounts")
pgrep -f -- "registry serve --address $REGISTRY" >/dev/null && left+=("registry")
ip link show "$BRIDGE" >/dev/null 2>&1 && left+=("link $BRIDGE")
for ipt in iptables ip6tables; do
  for table in filter nat mangle; do
    $ipt -t $table -S 2>/dev/null | grep -qE "KVASIR-CLUSTER|KUBE-|CNI-" && left+=("$ipt $table chains")
  done
done
[[ -e $CLUSTER_DIR || -e $RUN_DIR ]] && left+=("state directories")
if ((${#left[@]})); then
  die "left behind: ${left[*]}"
fi
log "down: nothing left"
