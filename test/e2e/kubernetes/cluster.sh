#!/usr/bin/env bash
# A real Kubernetes on 127.0.0.1 for Basalt's end-to-end test: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, a kubelet on a
# fake container runtime (containers are not real, but everything the kubelet
# does for volumes is), and Basalt itself: basalt-csi controller with the real
# csi-provisioner and csi-attacher, basalt-csi node with a small registrar.
#
#   cluster.sh start   (needs BIN=<tools dir> from build-tools.sh, and CEPH_CONF,
#                       CEPH_KEYRING of a running Ceph cluster with pools volumes-a,
#                       volumes-b and images)
#   cluster.sh stop
#
# Everything lives in $E2E (default <repo>/_output/e2e); PIDs in $E2E/pids.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
E2E=${E2E:-$ROOT/_output/e2e}
NODE=${E2E_NODE:-e2e-node}
ZONE=zone-a
NS=basalt-system
DRIVER=rbd.basalt.dev
KUBELET_ROOT=$E2E/kubelet
PLUGIN_DIR=$KUBELET_ROOT/plugins/$DRIVER
log() { echo "e2e-cluster: $*" >&2; }

start_bg() { # start_bg NAME CMD... : run in the background, logging to $E2E/logs/NAME.log
  local name=$1
  shift
  "$@" >"$E2E/logs/$name.log" 2>&1 &
  echo $! >"$E2E/pids/$name"
}

wait_for() { # wait_for DESC SECONDS CMD...
  local desc=$1 secs=$2 i
  shift 2
  for ((i = 0; i < secs * 10; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  log "timed out waiting for $desc"
  return 1
}

kc() { timeout 60 "$BIN/kubectl" --kubeconfig "$E2E/admin.kubeconfig" "$@"; }

certs() {
  local d=$E2E/pki
  mkdir -p "$d"
  cd "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj "/CN=basalt-e2e-ca" 2>/dev/null
  cat >san.cnf <<CNF
[req]
distinguished_name = dn
[dn]
[ext]
subjectAltName = IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.0.0.1
extendedKeyUsage = serverAuth,clientAuth
CNF
  openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" 2>/dev/null
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt -days 2 -extfile san.cnf -extensions ext 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr -subj "/O=system:masters/CN=e2e-admin" 2>/dev/null
  openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out admin.crt -days 2 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  cd - >/dev/null
}

kubeconfig() { # kubeconfig FILE [TOKEN]: admin certificate, or a bearer token
  local user
  if [ -n "${2:-}" ]; then
    user="    token: $2"
  else
    user="    client-certificate: $E2E/pki/admin.crt
    client-key: $E2E/pki/admin.key"
  fi
  cat >"$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority: $E2E/pki/ca.crt
users:
- name: e2e
  user:
$user
contexts:
- name: e2e
  context: {cluster: e2e, user: e2e}
current-context: e2e
KC
}

cmd_start() {
  : "${BIN:?BIN must point at the tools built by build-tools.sh}"
  : "${CEPH_CONF:?}" "${CEPH_KEYRING:?}"
  cmd_stop
  # A fresh cluster every time: stale objects in etcd would describe volumes
  # of a Ceph cluster that no longer exists.
  rm -rf --one-file-system "$E2E"
  mkdir -p "$E2E"/{logs,pids,etcd,scratch} "$KUBELET_ROOT" "$PLUGIN_DIR" "$KUBELET_ROOT/plugins_registry"
  certs
  kubeconfig "$E2E/admin.kubeconfig"

  log "etcd, kube-apiserver"
  start_bg etcd "$BIN/etcd" --data-dir "$E2E/etcd" --listen-client-urls http://127.0.0.1:2379 \
    --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 \
    --initial-advertise-peer-urls http://127.0.0.1:2380 --initial-cluster default=http://127.0.0.1:2380 --name default
  wait_for etcd 30 curl -sf http://127.0.0.1:2379/health
  start_bg kube-apiserver "$BIN/kube-apiserver" --etcd-servers http://127.0.0.1:2379 \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port 6443 \
    --tls-cert-file "$E2E/pki/apiserver.crt" --tls-private-key-file "$E2E/pki/apiserver.key" \
    --client-ca-file "$E2E/pki/ca.crt" --service-account-key-file "$E2E/pki/sa.pub" \
    --service-account-signing-key-file "$E2E/pki/sa.key" --service-account-issuer https://kubernetes.default.svc \
    --service-cluster-ip-range 10.0.0.0/24 --authorization-mode Node,RBAC --endpoint-reconciler-type none \
    --allow-privileged=true
  wait_for kube-apiserver 60 kc get --raw /readyz

  log "kube-controller-manager, kube-scheduler"
  start_bg kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig "$E2E/admin.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 10257 --leader-elect=false \
    --service-account-private-key-file "$E2E/pki/sa.key" --root-ca-file "$E2E/pki/ca.crt" \
    --cluster-signing-cert-file "$E2E/pki/ca.crt" --cluster-signing-key-file "$E2E/pki/ca.key" \
    --use-service-account-credentials=false --controllers '*,-nodeipam,-cloud-node-lifecycle'
  start_bg kube-scheduler "$BIN/kube-scheduler" --kubeconfig "$E2E/admin.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 10259 --leader-elect=false

  log "fake container runtime, kubelet"
  start_bg fakecri "$BIN/fakecri" --listen "$E2E/cri.sock"
  wait_for "fake CRI socket" 30 test -S "$E2E/cri.sock"
  cat >"$E2E/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
failCgroupV1: false
cgroupsPerQOS: false
cgroupDriver: cgroupfs
enforceNodeAllocatable: []
failSwapOn: false
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
resolvConf: ""
containerRuntimeEndpoint: unix://$E2E/cri.sock
podLogsDir: $E2E/pod-logs
syncFrequency: 5s
fileCheckFrequency: 5s
evictionHard: {}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
YAML
  # Run from an empty scratch directory: the kubelet's log clean-up works
  # relative to its working directory when a container's log path is empty.
  # The node's zone label is where the node plugin takes its zone from
  # (--zone-from-node-label), as the DaemonSet of deploy/kubernetes does.
  (cd "$E2E/scratch" && start_bg kubelet "$BIN/kubelet" --kubeconfig "$E2E/admin.kubeconfig" \
    --config "$E2E/kubelet.yaml" --root-dir "$KUBELET_ROOT" --hostname-override "$NODE" \
    --node-labels "topology.kubernetes.io/zone=$ZONE" --v 2)
  wait_for "node $NODE Ready" 90 sh -c "'$BIN/kubectl' --kubeconfig '$E2E/admin.kubeconfig' get node $NODE -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -q True"

  log "snapshot CRDs and snapshot-controller (external-snapshotter, the cluster's part)"
  kc apply --server-side -f "$BIN/crd" >"$E2E/logs/apply-crds.log"
  wait_for "snapshot CRDs established" 60 kc wait --for condition=established --timeout=5s \
    crd/volumesnapshots.snapshot.storage.k8s.io crd/volumegroupsnapshots.groupsnapshot.storage.k8s.io
  start_bg snapshot-controller "$BIN/snapshot-controller" --kubeconfig "$E2E/admin.kubeconfig" \
    --feature-gates=CSIVolumeGroupSnapshot=true --leader-election=false --retry-interval-max=5s --v=3

  log "deploy/kubernetes (namespace, RBAC, CSIDriver, config) with kubectl apply -k"
  # Without the node DaemonSet: its containers would not be real here (the
  # node plugin runs on this host, below), and the kubelet would create its
  # hostPath directories on this host.
  kc apply -k "$ROOT/deploy/kubernetes" -l 'app.kubernetes.io/name!=basalt-node' >"$E2E/logs/apply.log"
  # The sidecars run on this host with the controller ServiceAccount's own
  # token, so the RBAC rules of deploy/kubernetes are what they get.
  wait_for "basalt-controller service account" 30 kc -n $NS get serviceaccount basalt-controller
  kubeconfig "$E2E/controller.kubeconfig" "$(kc -n $NS create token basalt-controller --duration 4h)"

  log "basalt-csi controller, csi-provisioner, csi-attacher, csi-snapshotter, csi-resizer"
  # The controller and the node plugin run as the two cephx users the README
  # tells operators to make.
  CEPH_ARGS="-c $CEPH_CONF --keyring $CEPH_KEYRING" "$ROOT/deploy/ceph-users.sh" "$E2E/users" \
    volumes-a volumes-b images:ro >"$E2E/logs/ceph-users.log"
  local users="user: basalt-controller
    keyring: $E2E/users/ceph.client.basalt-controller.keyring
    nodeUser: basalt-node
    nodeKeyring: $E2E/users/ceph.client.basalt-node.keyring"
  cat >"$E2E/basalt.yaml" <<YAML
backends:
  - name: a-one
    cephConf: $CEPH_CONF
    $users
    pool: volumes-a
    zone: $ZONE
    maxOverSubscriptionRatio: 100
  - name: a-two
    cephConf: $CEPH_CONF
    $users
    pool: volumes-b
    zone: $ZONE
    maxOverSubscriptionRatio: 100
statsIntervalSeconds: 5
YAML
  start_bg basalt-controller "$ROOT/bin/basalt-csi" --mode=controller --config "$E2E/basalt.yaml" \
    --endpoint "unix://$E2E/controller.sock"
  wait_for "controller socket" 30 test -S "$E2E/controller.sock"
  start_bg csi-provisioner env NAMESPACE=$NS POD_NAME=basalt-controller-e2e NODE_NAME=$NODE \
    "$BIN/csi-provisioner" --kubeconfig "$E2E/controller.kubeconfig" --csi-address "$E2E/controller.sock" \
    --feature-gates=Topology=true --enable-capacity --capacity-ownerref-level=-1 --capacity-poll-interval=5s \
    --extra-create-metadata --strict-topology --leader-election=false --timeout=120s --v=3
  start_bg csi-attacher "$BIN/csi-attacher" --kubeconfig "$E2E/controller.kubeconfig" \
    --csi-address "$E2E/controller.sock" --leader-election=false --timeout=120s --v=3
  start_bg csi-snapshotter "$BIN/csi-snapshotter" --kubeconfig "$E2E/controller.kubeconfig" \
    --csi-address "$E2E/controller.sock" --leader-election=false --timeout=120s \
    --feature-gates=CSIVolumeGroupSnapshot=true --extra-create-metadata --retry-interval-max=5s --v=3
  start_bg csi-resizer "$BIN/csi-resizer" --kubeconfig "$E2E/controller.kubeconfig" \
    --csi-address "$E2E/controller.sock" --leader-election=false --timeout=120s --retry-interval-max=5s --v=3

  log "basalt-csi node (fuse mapper), registrar"
  # With the basalt-node ServiceAccount's own token: its RBAC (get nodes)
  # is what lets it read its zone label.
  kubeconfig "$E2E/node.kubeconfig" "$(kc -n $NS create token basalt-node --duration 4h)"
  start_bg basalt-node "$ROOT/bin/basalt-csi" --mode=node --config "$E2E/basalt.yaml" \
    --endpoint "unix://$PLUGIN_DIR/csi.sock" --node-id "$NODE" --mapper fuse \
    --zone-from-node-label topology.kubernetes.io/zone --kubeconfig "$E2E/node.kubeconfig" \
    --state-dir "$E2E/node-state" --max-volumes-per-node 32
  wait_for "node plugin socket" 60 test -S "$PLUGIN_DIR/csi.sock"
  start_bg registrar "$BIN/registrar" --driver-name "$DRIVER" \
    --kubelet-registration-path "$PLUGIN_DIR/csi.sock" --plugin-registration-dir "$KUBELET_ROOT/plugins_registry"
  wait_for "CSINode with $DRIVER" 60 sh -c "'$BIN/kubectl' --kubeconfig '$E2E/admin.kubeconfig' get csinode $NODE -o jsonpath='{.spec.drivers[*].name}' | grep -q $DRIVER"
  log "ready: KUBECONFIG=$E2E/admin.kubeconfig"
  echo "KUBECONFIG=$E2E/admin.kubeconfig"
  echo "KUBELET_ROOT=$KUBELET_ROOT"
  echo "NODE_STATE=$E2E/node-state"
  echo "E2E=$E2E"
}

cmd_stop() {
  [ -d "$E2E/pids" ] || return 0
  local order=(registrar basalt-node csi-resizer csi-snapshotter csi-attacher csi-provisioner basalt-controller snapshot-controller kubelet fakecri kube-scheduler kube-controller-manager kube-apiserver etcd)
  local name pid
  for name in "${order[@]}"; do
    [ -f "$E2E/pids/$name" ] || continue
    pid=$(cat "$E2E/pids/$name")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$E2E/pids/$name"
  done
  # What a failed run may leave: rbd-fuse daemons of the node plugin (ended
  # by PID, found by their mount point under our state directory), the
  # kubelet's volume mounts, loop devices on our FUSE files.
  for pid in $(pgrep -x rbd-fuse || true); do
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$E2E/node-state/"; then kill -9 "$pid" 2>/dev/null || true; fi
  done
  { grep -F " $E2E/" /proc/self/mountinfo || true; } | awk '{print $5}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  { timeout 20 losetup --list --noheadings --output NAME,BACK-FILE 2>/dev/null || true; } | awk -v d="$E2E/node-state" 'index($2, d) {print $1}' |
    while read -r dev; do timeout 20 losetup -d "$dev" 2>/dev/null || true; done
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
*)
  echo "usage: $0 start|stop" >&2
  exit 2
  ;;
esac
