# Shared by hack/cluster-up.sh and hack/cluster-down.sh: where the test
# cluster lives and how it is addressed. Sourced, not run.
#
# Everything the cluster writes is under CLUSTER_DIR (state, logs, PKI,
# kubelet and containerd roots) and RUN_DIR (sockets, containerd state); the
# binaries and the registry's storage are caches under CACHE_DIR, kept
# between runs so that a second bring-up builds nothing.

CACHE_DIR=${KVASIR_CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvasir/cluster}
CLUSTER_DIR=${KVASIR_CLUSTER_DIR:-/var/lib/kvasir-cluster}
RUN_DIR=${KVASIR_CLUSTER_RUN:-/run/kvasir-cluster}
LOG_DIR=$CLUSTER_DIR/logs
# PIDs under /run: cleared at boot, so a PID file never outlives its process
# by a reboot.
PID_DIR=$RUN_DIR/pids
PKI=$CLUSTER_DIR/pki
KUBECONFIG_FILE=$CLUSTER_DIR/kubeconfig
SOCK=$RUN_DIR/containerd.sock

# The node's only network: a bridge with the node's address. Pods are on
# 10.244.0.0/24; the API server, the kubelet and the bridge gateway are
# 10.244.0.1, an address no other machine can reach (see the guard below).
BRIDGE=kvasir0
NODE_NAME=kvasir-node
NODE_IP=10.244.0.1
POD_SUBNET=10.244.0.0/24
CLUSTER_CIDR=10.244.0.0/16
SERVICE_CIDR=10.96.0.0/16
API_SERVICE_IP=10.96.0.1
DNS_SERVICE_IP=10.96.0.10
API_PORT=6443
ETCD_CLIENT=127.0.0.1:32379
ETCD_PEER=127.0.0.1:32380
REGISTRY=${KVASIR_CLUSTER_REGISTRY:-127.0.0.1:5000}

# The guard: mangle chains that drop every packet from or to the pod and
# service CIDRs that would leave, or arrive, through any interface but
# loopback and the bridge.
GUARD=KVASIR-CLUSTER-GUARD
GUARD_IN=KVASIR-CLUSTER-GUARD-IN

# Kernel settings the cluster changes (the bridge plugin turns on
# forwarding; the kubelet and kube-proxy set the rest): saved at bring-up,
# put back at teardown.
SYSCTLS=(
  net/ipv4/ip_forward net/bridge/bridge-nf-call-iptables net/ipv4/conf/all/route_localnet
  vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops
  kernel/keys/root_maxkeys kernel/keys/root_maxbytes
  net/netfilter/nf_conntrack_tcp_timeout_established net/netfilter/nf_conntrack_tcp_timeout_close_wait
)

log() { echo "cluster: $*" >&2; }
die() { log "$*"; exit 1; }

# start_time PID prints the process's start time (clock ticks since boot,
# field 22 of /proc/PID/stat): a PID and its start time name one process.
start_time() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) } # after the command name, which may hold spaces
  # shellcheck disable=SC2086
  set -- $stat
  echo "${20}"
}

# pid_of NAME prints the recorded PID of a daemon if that very process still
# runs (same PID and start time), never a process that reused the PID.
pid_of() {
  local f=$PID_DIR/$1.pid pid started
  [[ -f $f ]] || return 1
  read -r pid started <"$f" || return 1
  [[ -n $pid && -n $started && $(start_time "$pid") == "$started" ]] && echo "$pid"
}
