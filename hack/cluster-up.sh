#!/usr/bin/env bash
# Brings up a real single-node Kubernetes cluster on this machine and prints
# the path of its kubeconfig: containerd and runc with a CNI bridge, etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and
# kube-proxy (all built from the Go module proxy, hack/envtest-assets.sh),
# CoreDNS, and a plain-HTTP image registry on loopback for ko.
#
#   hack/cluster-up.sh            # or: make cluster
#   export KUBECONFIG=$(hack/cluster-up.sh)
#   . /var/lib/kvasir-cluster/env && ko apply -f config/
#   hack/cluster-down.sh          # or: make cluster-down; removes everything
#
# Needs root and Linux. Idempotent: a second run with the cluster up prints
# the kubeconfig and does nothing else; a run that finds a broken or
# half-torn cluster tears it down first. Daemons run in their own sessions
# (there is no systemd); their PIDs (with start times) are in
# /run/kvasir-cluster/pids and their logs in /var/lib/kvasir-cluster/logs.
#
# No packet of the cluster leaves the machine: before any pod starts, the
# mangle chains KVASIR-CLUSTER-GUARD (first in POSTROUTING) and
# KVASIR-CLUSTER-GUARD-IN (first in PREROUTING) drop everything from or to
# the pod and service CIDRs on any interface but loopback and the cluster's
# bridge. See docs/kubernetes.md.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=cluster/lib.sh
. "$repo/hack/cluster/lib.sh"

[[ $(uname -s) == Linux ]] || die "needs Linux (containers)"
[[ $(id -u) == 0 ]] || die "needs root (containers, network namespaces, iptables)"

# ---- Debian packages: the container runtime and the network tools --------
need_pkgs=()
for c in containerd:containerd runc:runc iptables:iptables conntrack:conntrack openssl:openssl curl:curl ip:iproute2; do
  command -v "${c%%:*}" >/dev/null || need_pkgs+=("${c#*:}")
done
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] || need_pkgs+=(containernetworking-plugins)
if ((${#need_pkgs[@]})); then
  command -v apt-get >/dev/null || die "missing ${need_pkgs[*]} and no apt-get to install them"
  log "installing ${need_pkgs[*]} from Debian's packages"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >&2
fi

# ---- Already up? ----------------------------------------------------------
K8S=$("$repo/hack/envtest-assets.sh")
kubectl() { "$K8S/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }
if [[ -f $CLUSTER_DIR/up ]]; then
  healthy=1
  for d in registry containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
    pid_of "$d" >/dev/null || { healthy=0; break; }
  done
  # The guard must still be first in its hooks (a firewall reload may flush
  # mangle); otherwise the cluster is torn down and made again.
  [[ $(iptables -t mangle -S POSTROUTING 2>/dev/null | sed -n 2p) == "-A POSTROUTING -j $GUARD" &&
    $(iptables -t mangle -S PREROUTING 2>/dev/null | sed -n 2p) == "-A PREROUTING -j $GUARD_IN" ]] || healthy=0
  if ((healthy)) && kubectl get --raw /readyz >/dev/null 2>&1; then
    echo "$KUBECONFIG_FILE"
    exit 0
  fi
fi
if [[ -e $CLUSTER_DIR || -e $RUN_DIR ]] || iptables -t mangle -S "$GUARD" >/dev/null 2>&1; then
  log "a previous cluster is here, broken or half torn down: tearing it down first"
  "$repo/hack/cluster-down.sh" >&2
fi

# ---- Tools: ko, crane, CoreDNS, pause, mkimage (cached) -------------------
BIN=$("$repo/hack/cluster-assets.sh")

# Teardown removes every KUBE-* chain: on a machine that already has some
# (a real node's kube-proxy or kubelet), they would be that node's.
if iptables-save 2>/dev/null | grep -q -- '-N KUBE-'; then
  die "this machine already has KUBE-* iptables chains (a kubelet or kube-proxy of another cluster?): not starting"
fi

mkdir -p "$CLUSTER_DIR" "$RUN_DIR" "$LOG_DIR" "$PID_DIR" "$PKI"
chmod 700 "$CLUSTER_DIR" "$RUN_DIR"

# start NAME CMD...: runs CMD in a session of its own, logs to LOG_DIR/NAME.log
# and records the daemon's own PID (not a wrapper's) in PID_DIR/NAME.pid.
start() {
  local name=$1; shift
  setsid bash -c 'echo $$ >"$0.tmp"; exec "$@"' "$PID_DIR/$name.pid" "$@" \
    >"$LOG_DIR/$name.log" 2>&1 </dev/null &
  local pid
  for _ in $(seq 50); do [[ -s $PID_DIR/$name.pid.tmp ]] && break; sleep 0.1; done
  pid=$(<"$PID_DIR/$name.pid.tmp")
  echo "$pid $(start_time "$pid")" >"$PID_DIR/$name.pid"
  rm -f "$PID_DIR/$name.pid.tmp"
  log "$name started (pid $pid)"
}

# wait_for WHAT SECONDS CMD...: polls CMD once a second until it succeeds.
wait_for() {
  local what=$1 secs=$2 i; shift 2
  for ((i = 0; i < secs; i++)); do
    "$@" >/dev/null 2>&1 && { log "$what after ${i}s"; return 0; }
    sleep 1
  done
  die "$what: not within ${secs}s (logs in $LOG_DIR)"
}

# ---- Network: the guard first, then the bridge -----------------------------
# What teardown puts back.
for s in "${SYSCTLS[@]}"; do
  [[ -f /proc/sys/$s ]] && echo "$s $(</proc/sys/$s)"
done >"$CLUSTER_DIR/sysctl.orig"
[[ -d /var/log/containers ]] || touch "$CLUSTER_DIR/created-var-log-containers"
[[ -d /run/containerd ]] || touch "$CLUSTER_DIR/created-run-containerd"

# In the mangle table, ahead of anything kube-proxy and the kubelet insert
# into filter and nat: POSTROUTING sees every packet about to leave, after
# routing and Service DNAT and before masquerading; PREROUTING sees every
# packet arriving, before Service DNAT.
#
# guard CHAIN HOOK -o|-i: a chain, first in HOOK, that lets loopback and the
# bridge through and drops every other packet from or to the cluster's CIDRs.
guard() {
  iptables -t mangle -N "$1"
  iptables -t mangle -A "$1" "$3" lo -j RETURN
  iptables -t mangle -A "$1" "$3" "$BRIDGE" -j RETURN
  for cidr in "$CLUSTER_CIDR" "$SERVICE_CIDR"; do
    iptables -t mangle -A "$1" -s "$cidr" -j DROP
    iptables -t mangle -A "$1" -d "$cidr" -j DROP
  done
  iptables -t mangle -I "$2" 1 -j "$1"
}
guard "$GUARD" POSTROUTING -o
guard "$GUARD_IN" PREROUTING -i
log "guard installed: mangle $GUARD first in POSTROUTING, $GUARD_IN first in PREROUTING"

# The bridge exists before any pod so that the node's address does; the CNI
# bridge plugin takes it over as its gateway.
ip link add "$BRIDGE" type bridge
ip addr add "$NODE_IP/${POD_SUBNET#*/}" dev "$BRIDGE"
ip link set "$BRIDGE" up
# Pod to Service to a pod on the same bridge: the reply must pass conntrack.
echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables

mkdir -p "$CLUSTER_DIR/cni"
cat >"$CLUSTER_DIR/cni/10-kvasir.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "kvasir",
  "plugins": [{
    "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {"type": "host-local", "dataDir": "$CLUSTER_DIR/cni-ipam",
             "ranges": [[{"subnet": "$POD_SUBNET", "gateway": "$NODE_IP"}]],
             "routes": [{"dst": "0.0.0.0/0"}]}
  }]
}
EOF

# ---- PKI: a CA, the API server's certificate, one client per component ----
cd "$PKI"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 7 -subj /CN=kvasir-cluster-ca 2>/dev/null
openssl genrsa -out sa.key 2048 2>/dev/null
openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
cert() { # cert NAME SUBJECT [SAN]
  openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
  if [[ -n ${3:-} ]]; then
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$3" >"$1.ext"
  else
    printf 'extendedKeyUsage=clientAuth\n' >"$1.ext"
  fi
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 7 -out "$1.crt" -extfile "$1.ext" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
cert apiserver /CN=kube-apiserver "IP:$API_SERVICE_IP,IP:$NODE_IP,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
cert admin "/O=system:masters/CN=kvasir-cluster-admin"
cert controller-manager /CN=system:kube-controller-manager
cert scheduler /CN=system:kube-scheduler
cert proxy /CN=system:kube-proxy
cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
chmod 600 ./*.key
kubeconfig() { # kubeconfig FILE CERT
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: kvasir, cluster: {server: "https://$NODE_IP:$API_PORT", certificate-authority: "$PKI/ca.crt"}}]
users: [{name: $2, user: {client-certificate: "$PKI/$2.crt", client-key: "$PKI/$2.key"}}]
contexts: [{name: kvasir, context: {cluster: kvasir, user: $2}}]
current-context: kvasir
EOF
  chmod 600 "$1"
}
kubeconfig "$KUBECONFIG_FILE" admin
for c in controller-manager scheduler proxy kubelet; do kubeconfig "$PKI/$c.kubeconfig" "$c"; done
cd /

# ---- Registry and the two images that come from no registry ---------------
mkdir -p "$CACHE_DIR/registry"
start registry "$BIN/crane" registry serve --address "$REGISTRY" --disk "$CACHE_DIR/registry"
wait_for "registry ready" 30 curl -sf "http://$REGISTRY/v2/"
pid_of registry >/dev/null || die "the registry exited (is $REGISTRY taken?): $(tail -n 3 "$LOG_DIR/registry.log")"
BASE_IMAGE=$("$BIN/mkimage" base "$REGISTRY/kvasir-cluster/base:static")
PAUSE_IMAGE=$("$BIN/mkimage" binary "$REGISTRY/kvasir-cluster/pause:1" "$BIN/pause")
COREDNS_IMAGE=$("$BIN/mkimage" binary "$REGISTRY/kvasir-cluster/coredns:1" "$BIN/coredns")

# ---- containerd ------------------------------------------------------------
mkdir -p "$CLUSTER_DIR/certs.d/$REGISTRY"
# Any other registry resolves to a closed port on loopback: the runtime
# never pulls from outside the machine.
mkdir -p "$CLUSTER_DIR/certs.d/_default"
cat >"$CLUSTER_DIR/certs.d/_default/hosts.toml" <<EOF
[host."http://127.0.0.1:9"]
  capabilities = ["pull", "resolve"]
EOF
cat >"$CLUSTER_DIR/certs.d/$REGISTRY/hosts.toml" <<EOF
server = "http://$REGISTRY"
[host."http://$REGISTRY"]
  capabilities = ["pull", "resolve"]
EOF
cat >"$CLUSTER_DIR/containerd.toml" <<EOF
version = 2
root = "$CLUSTER_DIR/containerd"
state = "$RUN_DIR/containerd"
oom_score = 0
[grpc]
  address = "$SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  disable_apparmor = true
  # root here lacks CAP_SYS_RESOURCE: the sandbox fails without this.
  restrict_oom_score_adj = true
  disable_hugetlb_controller = true
  tolerate_missing_hugetlb_controller = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CLUSTER_DIR/cni"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$RUN_DIR/runc"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$CLUSTER_DIR/certs.d"
[plugins."io.containerd.internal.v1.opt"]
  path = "$CLUSTER_DIR/opt"
EOF
start containerd containerd --config "$CLUSTER_DIR/containerd.toml"
wait_for "containerd ready" 30 ctr --address "$SOCK" version

# ---- Control plane ----------------------------------------------------------
start etcd "$K8S/etcd" --data-dir "$CLUSTER_DIR/etcd" --name kvasir \
  --listen-client-urls "http://$ETCD_CLIENT" --advertise-client-urls "http://$ETCD_CLIENT" \
  --listen-peer-urls "http://$ETCD_PEER" --initial-advertise-peer-urls "http://$ETCD_PEER" \
  --initial-cluster "kvasir=http://$ETCD_PEER" --listen-metrics-urls ""
# Pod Security "baseline" everywhere: no hostNetwork, hostPID or hostPath
# pod can step around the guard.
cat >"$CLUSTER_DIR/admission.yaml" <<EOF
apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
  - name: PodSecurity
    configuration:
      apiVersion: pod-security.admission.config.k8s.io/v1
      kind: PodSecurityConfiguration
      defaults: {enforce: baseline, enforce-version: latest}
      exemptions: {}
EOF
start kube-apiserver "$K8S/kube-apiserver" --etcd-servers="http://$ETCD_CLIENT" \
  --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port="$API_PORT" \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/ca.crt" --authorization-mode=Node,RBAC --anonymous-auth=false \
  --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types=InternalIP \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
  --enable-admission-plugins=NodeRestriction --allow-privileged=false \
  --admission-control-config-file="$CLUSTER_DIR/admission.yaml"
wait_for "API server ready" 120 kubectl get --raw /readyz
start kube-controller-manager "$K8S/kube-controller-manager" --kubeconfig="$PKI/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$PKI/controller-manager.kubeconfig" --authorization-kubeconfig="$PKI/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
  --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
  --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" --controllers='*,-nodeipam,-cloud-node-lifecycle'
start kube-scheduler "$K8S/kube-scheduler" --kubeconfig="$PKI/scheduler.kubeconfig" \
  --authentication-kubeconfig="$PKI/scheduler.kubeconfig" --authorization-kubeconfig="$PKI/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --leader-elect=false

# ---- Node -------------------------------------------------------------------
: >"$CLUSTER_DIR/resolv.conf"
cat >"$CLUSTER_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
containerRuntimeEndpoint: unix://$SOCK
# This machine's cgroups are v1 and it has no systemd.
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: [$DNS_SERVICE_IP]
resolvConf: $CLUSTER_DIR/resolv.conf
podCIDR: $POD_SUBNET
podLogsDir: $CLUSTER_DIR/pod-logs
serializeImagePulls: false
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
start kubelet "$K8S/kubelet" --config="$CLUSTER_DIR/kubelet.yaml" --kubeconfig="$PKI/kubelet.kubeconfig" \
  --root-dir="$CLUSTER_DIR/kubelet" --node-ip="$NODE_IP" --hostname-override="$NODE_NAME"
cat >"$CLUSTER_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $PKI/proxy.kubeconfig}
mode: iptables
clusterCIDR: $CLUSTER_CIDR
hostnameOverride: $NODE_NAME
nodePortAddresses: ["$NODE_IP/32"]
conntrack: {maxPerCore: 0}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
EOF
start kube-proxy "$K8S/kube-proxy" --config="$CLUSTER_DIR/kube-proxy.yaml"
wait_for "node Ready" 120 kubectl wait --for=condition=Ready "node/$NODE_NAME" --timeout=1s

# ---- DNS --------------------------------------------------------------------
sed -e "s|@IMAGE@|$COREDNS_IMAGE|" -e "s|@DNS_SERVICE_IP@|$DNS_SERVICE_IP|" "$repo/hack/cluster/coredns.yaml" | kubectl apply -f - >&2
wait_for "cluster DNS ready" 180 kubectl -n kube-system rollout status deployment/coredns --timeout=1s

# ---- LeaderWorkerSet ---------------------------------------------------------
# Serving groups run as LeaderWorkerSets (docs/kubernetes.md, "Serving
# groups"): LWS's own manifests from the module hack/lws pins, its controller
# built from the module proxy (hack/cluster-assets.sh), installed as
# docs/kubernetes.md tells users to. Ready once its webhooks answer: a server
# side dry run of a LeaderWorkerSet goes through both.
LWS_VERSION=$(awk '$1 == "sigs.k8s.io/lws" { print $2; exit } $1 == "require" && $2 == "sigs.k8s.io/lws" { print $3; exit }' "$repo/hack/lws/go.mod")
[[ -n $LWS_VERSION ]] || die "hack/lws/go.mod does not require sigs.k8s.io/lws"
LWS_IMAGE=$("$BIN/mkimage" binary "$REGISTRY/kvasir-cluster/lws:$LWS_VERSION" "$BIN/lws/manager")
lws_module=$(cd "$repo/hack/lws" && GOWORK=off go list -m -f '{{.Dir}}' sigs.k8s.io/lws)
mkdir -p "$CLUSTER_DIR/lws/overlay"
cp -r "$lws_module/config" "$CLUSTER_DIR/lws/config"
chmod -R u+w "$CLUSTER_DIR/lws" # the module cache's copy is read-only; teardown removes this one
sed "s|@IMAGE@|$LWS_IMAGE|" "$repo/hack/cluster/lws.yaml" >"$CLUSTER_DIR/lws/overlay/kustomization.yaml"
kubectl apply --server-side -k "$CLUSTER_DIR/lws/overlay" >&2
wait_for "LeaderWorkerSet controller ready" 180 kubectl -n lws-system rollout status deployment/lws-controller-manager --timeout=1s
cat >"$CLUSTER_DIR/lws/probe.yaml" <<EOF
apiVersion: leaderworkerset.x-k8s.io/v1
kind: LeaderWorkerSet
metadata: {name: probe, namespace: default}
spec:
  leaderWorkerTemplate:
    size: 2
    workerTemplate:
      spec:
        containers: [{name: c, image: "$BASE_IMAGE"}]
EOF
wait_for "LeaderWorkerSet webhooks ready" 180 kubectl apply --dry-run=server -f "$CLUSTER_DIR/lws/probe.yaml"

cat >"$CLUSTER_DIR/env" <<EOF
# . this file, then: ko apply -f config/
export KUBECONFIG=$KUBECONFIG_FILE
export KO_DOCKER_REPO=$REGISTRY/kvasir
export KO_DEFAULTBASEIMAGE=$BASE_IMAGE
export KO_DEFAULTPLATFORMS=linux/amd64
export PATH=$BIN:$K8S:\$PATH
EOF
touch "$CLUSTER_DIR/up"
log "up: . $CLUSTER_DIR/env && ko apply -f config/"
echo "$KUBECONFIG_FILE"
