#!/usr/bin/env bash
# A real one-node Kubernetes for Basalt's end-to-end test: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, a
# kubelet on containerd + runc (real containers), and Basalt deployed as
# users deploy it: deploy/kubernetes applied with kustomize, unchanged but
# for the image names and this cluster's configuration, its controller
# Deployment and node DaemonSet running as pods of the images `make image`
# and images.sh-style scratch images of the sidecars built from their modules.
#
# Run it in private mount, PID and network namespaces (the Makefile's e2e
# target does): the kubelet's and containerd's mounts, the pod network, the
# node's address and kube-proxy's iptables rules then vanish with them.
#
#   cluster.sh net     (first, in the new network namespace: loopback up, and
#                       the node's address NODE_IP on a bridge of its own; start
#                       Ceph on that address, BASALT_CEPH_ADDR, so pods reach it)
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
# The network, all inside the test's own network namespace: the node's
# address (on the bridge basalt-node0; the kubelet refuses a loopback node
# IP), the pod network (the CNI bridge basalt-e2e0, whose gateway is the
# node) and the Service network (kube-proxy's iptables rules).
NODE_IP=10.244.76.1
POD_CIDR=10.244.77.0/24
SERVICE_CIDR=10.0.0.0/24
NS=basalt-system
DRIVER=rbd.basalt.dev
# The kubelet's and the node plugin's directories are where deploy/kubernetes
# puts them; in this mount namespace they are binds of private ones in $E2E.
KUBELET_ROOT=/var/lib/kubelet
NODE_STATE=/var/lib/basalt
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
subjectAltName = IP:127.0.0.1,IP:$NODE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.0.0.1
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

# backends CEPH_CONF KEYRING_DIR: Basalt's configuration of the two backends.
# Over-subscription 10: room for every volume the tests make, while the few
# MiB of data earlier tests leave in one pool do not outweigh a 2 GiB
# placement (at 100 they did, and the ten-PVC burst went 7:3).
backends() {
  local b
  echo "backends:"
  for b in a-one:volumes-a a-two:volumes-b; do
    cat <<YAML
  - name: ${b%%:*}
    cephConf: $1
    user: basalt-controller
    keyring: $2/ceph.client.basalt-controller.keyring
    nodeUser: basalt-node
    nodeKeyring: $2/ceph.client.basalt-node.keyring
    pool: ${b#*:}
    zone: $ZONE
    maxOverSubscriptionRatio: 10
YAML
  done
  echo "statsIntervalSeconds: 5"
}

# The binds this test makes in its mount namespace: $E2E/NAME over PATH.
BINDS=(kubelet:$KUBELET_ROOT node-state:$NODE_STATE var-log-containers:/var/log/containers)
# ours NAME:PATH: is PATH (still) our bind of $E2E/NAME?
ours() {
  local root
  root=$(findmnt -n -o FSROOT --mountpoint "${1#*:}" 2>/dev/null | tail -n1) || return 1
  [[ $root == */${E2E##*/}/${1%%:*} ]]
}

# images: every image the cluster runs, as OCI archives in $E2E/images:
# Basalt's (`make image`), each sidecar deploy/kubernetes names (a scratch
# image of the binary build-tools.sh built from the pinned module, whose
# version must be the manifest's tag), a pause image, busybox and nullcsi.
images() {
  local d=$E2E/images ref name tag bin have
  mkdir -p "$d"
  [ -f "$ROOT/_output/images/basalt-csi.tar" ] || "$ROOT/deploy/image.sh" "$ROOT/_output/images/basalt-csi.tar"
  cp "$ROOT/_output/images/basalt-csi.tar" "$d/basalt-csi.tar"
  for ref in $(kc kustomize "$ROOT/deploy/kubernetes" | sed -n 's/^ *image: *\(registry\.k8s\.io\/[^ ]*\)$/\1/p' | sort -u); do
    name=${ref##*/} && name=${name%%:*} && tag=${ref##*:}
    case $name in
    # Stand-ins: no version of these modules is served by the module proxy.
    csi-node-driver-registrar) bin=registrar ;;
    livenessprobe) bin=livenessprobe ;;
    *)
      bin=$name
      have=$("$BIN/$bin" --version 2>&1 | awk '{print $NF}')
      [ "$have" = "$tag" ] || { log "deploy/kubernetes pins $ref, but build-tools.sh builds $bin $have"; return 1; }
      ;;
    esac
    "$ROOT/deploy/image.sh" scratch "$d/$name.tar" "localhost/$name:$tag" "[\"/$bin\"]" "$BIN/$bin:/$bin"
  done
  "$ROOT/deploy/image.sh" scratch "$d/pause.tar" localhost/pause:e2e '["/catatonit","-P"]' /usr/bin/catatonit:/catatonit
  # bench-k8s's control driver (scale_control_test.go).
  "$ROOT/deploy/image.sh" scratch "$d/nullcsi.tar" localhost/nullcsi:e2e '["/nullcsi"]' "$BIN/nullcsi:/nullcsi"
  rm -rf "$E2E/busybox" && mkdir -p "$E2E/busybox/bin"
  cp /bin/busybox "$E2E/busybox/bin/"
  for name in $(/bin/busybox --list); do [ "$name" = busybox ] || ln -s busybox "$E2E/busybox/bin/$name"; done
  "$ROOT/deploy/image.sh" scratch "$d/busybox.tar" docker.io/library/busybox:1.36 '' "tree:$E2E/busybox"
  # The upstream storage suite's images, under the names e2e.test v1.36.3
  # asks for (test/utils/image/manifest.go): agnhost built from the same
  # Kubernetes module, on busybox for the shell tools its helper pods run
  # (sh, nsenter, find); busybox for the image of which the suite runs only
  # a shell command (nginx in the exec test); Debian's minbase for
  # glibc-dns-testing, which the multi-pod tests pick for its GNU userland
  # (they write with `dd oflag=nocache`, which BusyBox's dd refuses).
  local e2eimg=registry.k8s.io/e2e-test-images
  ln -sf agnhost "$E2E/busybox/agnhost-2"
  "$ROOT/deploy/image.sh" scratch "$d/agnhost.tar" $e2eimg/agnhost:2.63.0 '["/agnhost"]' \
    "tree:$E2E/busybox" "$BIN/agnhost:/agnhost"
  rm "$E2E/busybox/agnhost-2"
  "$ROOT/deploy/image.sh" debian "$d/e2e-glibc-dns-testing.tar" $e2eimg/glibc-dns-testing:2.0.0
  for ref in $e2eimg/busybox:1.37.0-1 $e2eimg/nginx:1.15-4; do
    name=${ref##*/} && name=${name%%:*}
    "$ROOT/deploy/image.sh" scratch "$d/e2e-$name.tar" "$ref" '' "tree:$E2E/busybox"
  done
  "$ROOT/deploy/image.sh" scratch "$d/e2e-pause.tar" registry.k8s.io/pause:3.10.2 '["/catatonit","-P"]' /usr/bin/catatonit:/catatonit
}

# containerd_start: containerd with private root, state, sockets and CNI
# configuration; runc with cgroupfs; every image imported.
containerd_start() {
  local c=$E2E/containerd img
  mkdir -p "$c" "$E2E/cni/conf" "$E2E/cni/ipam"
  "$BIN/containerd" config default | sed \
    -e "s|^root = .*|root = '$c/root'|" -e "s|^state = .*|state = '$c/state'|" \
    -e "s|/run/containerd/containerd.sock|$c/containerd.sock|" \
    -e "s|sandbox = '.*'|sandbox = 'localhost/pause:e2e'|" \
    -e "s|restrict_oom_score_adj = false|restrict_oom_score_adj = true|" \
    -e "s|netns_mounts_under_state_dir = false|netns_mounts_under_state_dir = true|" \
    -e "s|bin_dirs = \['/opt/cni/bin'\]|bin_dirs = ['/usr/lib/cni']|" \
    -e "s|conf_dir = '/etc/cni/net.d'|conf_dir = '$E2E/cni/conf'|" \
    -e "s|^            Root = ''|            Root = '$c/runc'|" \
    -e "/\[plugins.'io.containerd.nri.v1.nri'\]/{n;s/disable = false/disable = true/}" >"$c/config.toml"
  # A bridge whose gateway is the node (its namespace): pods reach the API
  # server (through kube-proxy's Service rules) and Ceph on NODE_IP, and the
  # kubelet reaches their probes. No masquerading: nothing leaves.
  cat >"$E2E/cni/conf/10-basalt-e2e.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "basalt-e2e", "plugins": [
  {"type": "bridge", "bridge": "basalt-e2e0", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "dataDir": "$E2E/cni/ipam", "ranges": [[{"subnet": "$POD_CIDR"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "loopback"}]}
JSON
  start_bg containerd env PATH="$BIN:$PATH" "$BIN/containerd" --config "$c/config.toml"
  wait_for "containerd socket" 30 test -S "$c/containerd.sock"
  for img in "$E2E"/images/*.tar; do
    "$BIN/ctr" -a "$c/containerd.sock" -n k8s.io images import "$img" >/dev/null 2>>"$E2E/logs/ctr-import.log"
  done
}

# deploy_basalt: deploy/kubernetes through an overlay that changes only the
# images (the local ones) and the configuration (this cluster's Ceph and
# keys, as every user writes their own), and nothing else.
deploy_basalt() {
  local o=$E2E/deploy ref name
  mkdir -p "$o"
  backends /etc/ceph/ceph.conf /etc/ceph-keyring | sed 's/^/    /' >"$o/config.indented"
  {
    echo "apiVersion: kustomize.config.k8s.io/v1beta1"
    echo "kind: Kustomization"
    echo "resources: [$(realpath --relative-to="$o" "$ROOT/deploy/kubernetes")]"
    echo "images:"
    echo "  - {name: registry.example.com/basalt/basalt-csi, newName: localhost/basalt-csi, newTag: dev}"
    for ref in $(kc kustomize "$ROOT/deploy/kubernetes" | sed -n 's/^ *image: *\(registry\.k8s\.io\/[^ :]*\).*$/\1/p' | sort -u); do
      name=${ref##*/}
      echo "  - {name: $ref, newName: localhost/$name}"
    done
    echo "patches: [{path: config.yaml}]"
  } >"$o/kustomization.yaml"
  {
    cat <<YAML
apiVersion: v1
kind: ConfigMap
metadata: {name: basalt-config, namespace: $NS}
data:
  config.yaml: |
YAML
    cat "$o/config.indented"
    cat <<YAML
---
apiVersion: v1
kind: ConfigMap
metadata: {name: basalt-ceph-conf, namespace: $NS}
data:
  ceph.conf: |
    [global]
    fsid = $(sed -n 's/^[[:space:]]*fsid[[:space:]]*=[[:space:]]*//p' "$CEPH_CONF" | head -1)
    mon_host = $(sed -n 's/^[[:space:]]*mon[_ ]host[[:space:]]*=[[:space:]]*//p' "$CEPH_CONF" | head -1)
---
apiVersion: v1
kind: Secret
metadata: {name: basalt-ceph-keyring, namespace: $NS}
stringData:
  ceph.client.basalt-controller.keyring: |
$(sed 's/^/    /' "$E2E/users/ceph.client.basalt-controller.keyring")
---
apiVersion: v1
kind: Secret
metadata: {name: basalt-ceph-node-keyring, namespace: $NS}
stringData:
  ceph.client.basalt-node.keyring: |
$(sed 's/^/    /' "$E2E/users/ceph.client.basalt-node.keyring")
YAML
  } >"$o/config.yaml"
  kc kustomize "$o" >"$o/rendered.yaml"
  kc apply -f "$o/rendered.yaml" >"$E2E/logs/apply.log"
}

# cmd_net: the node's network, in a network namespace of the test's own
# (refused anywhere else: it would add a bridge to the host).
cmd_net() {
  local other
  other=$(ip -o link show | awk -F': ' '{print $2}' | grep -vx -e lo -e basalt-node0 || true)
  [ -z "$other" ] || { log "not in a private network namespace (it has: $(echo $other)); run: make e2e"; return 1; }
  ip link set lo up
  ip link show basalt-node0 >/dev/null 2>&1 || ip link add basalt-node0 type bridge
  ip addr replace "$NODE_IP/24" dev basalt-node0
  ip link set basalt-node0 up
  # A route to the Services' ClusterIPs, as a real node's default route
  # gives one: the kernel picks a route before kube-proxy's rules rewrite
  # the destination, so without one the host-network pods' calls fail.
  ip route replace "$SERVICE_CIDR" dev basalt-node0
  echo "NODE_IP=$NODE_IP"
}

cmd_start() {
  : "${BIN:?BIN must point at the tools built by build-tools.sh}"
  # Not `| grep -q`: under pipefail, grep quitting at the first match can
  # SIGPIPE the writer and fail the pipeline (it did, on a busy machine).
  local addrs
  addrs=$(ip -o addr show basalt-node0 2>/dev/null || true)
  [[ $addrs == *" $NODE_IP/"* ]] || { log "no $NODE_IP here: run cluster.sh net first"; return 1; }
  : "${CEPH_CONF:?}" "${CEPH_KEYRING:?}"
  cmd_stop
  # A fresh cluster every time: stale objects in etcd would describe volumes
  # of a Ceph cluster that no longer exists.
  rm -rf --one-file-system "$E2E"
  mkdir -p "$E2E"/{logs,pids,etcd,scratch,kubelet,node-state}
  certs
  # The kubelet and node plugin directories of deploy/kubernetes, private to
  # this mount namespace, and shared mounts (Bidirectional propagation needs
  # them so); /var/log/containers, which the kubelet insists on writing.
  local b
  for b in "${BINDS[@]}"; do
    mkdir -p "$E2E/${b%%:*}" "${b#*:}"
    mount --bind "$E2E/${b%%:*}" "${b#*:}"
  done
  mount --make-rshared "$KUBELET_ROOT" && mount --make-rshared "$NODE_STATE"
  mkdir -p "$PLUGIN_DIR" "$KUBELET_ROOT/plugins_registry"
  kubeconfig "$E2E/admin.kubeconfig"

  log "etcd, kube-apiserver"
  start_bg etcd "$BIN/etcd" --data-dir "$E2E/etcd" --listen-client-urls http://127.0.0.1:2379 \
    --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 \
    --initial-advertise-peer-urls http://127.0.0.1:2380 --initial-cluster default=http://127.0.0.1:2380 --name default
  wait_for etcd 30 curl -sf http://127.0.0.1:2379/health
  start_bg kube-apiserver "$BIN/kube-apiserver" --etcd-servers http://127.0.0.1:2379 \
    --bind-address 0.0.0.0 --advertise-address "$NODE_IP" --secure-port 6443 \
    --tls-cert-file "$E2E/pki/apiserver.crt" --tls-private-key-file "$E2E/pki/apiserver.key" \
    --client-ca-file "$E2E/pki/ca.crt" --service-account-key-file "$E2E/pki/sa.pub" \
    --service-account-signing-key-file "$E2E/pki/sa.key" --service-account-issuer https://kubernetes.default.svc \
    --service-cluster-ip-range "$SERVICE_CIDR" --authorization-mode Node,RBAC \
    --allow-privileged=true --kubelet-preferred-address-types InternalIP
  wait_for kube-apiserver 60 kc get --raw /readyz

  log "kube-controller-manager, kube-scheduler"
  start_bg kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig "$E2E/admin.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 10257 --leader-elect=false \
    --service-account-private-key-file "$E2E/pki/sa.key" --root-ca-file "$E2E/pki/ca.crt" \
    --cluster-signing-cert-file "$E2E/pki/ca.crt" --cluster-signing-key-file "$E2E/pki/ca.key" \
    --use-service-account-credentials=false --controllers '*,-nodeipam,-cloud-node-lifecycle'
  start_bg kube-scheduler "$BIN/kube-scheduler" --kubeconfig "$E2E/admin.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 10259 --leader-elect=false

  log "images (OCI archives, no registry)"
  images
  log "containerd (runc), CNI bridge"
  containerd_start
  log "kubelet (CRI: containerd)"
  cat >"$E2E/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
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
containerRuntimeEndpoint: unix://$E2E/containerd/containerd.sock
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
    --config "$E2E/kubelet.yaml" --root-dir "$KUBELET_ROOT" --hostname-override "$NODE" --node-ip "$NODE_IP" \
    --node-labels "topology.kubernetes.io/zone=$ZONE" --v 2)
  wait_for "node $NODE Ready" 90 sh -c "'$BIN/kubectl' --kubeconfig '$E2E/admin.kubeconfig' get node $NODE -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -q True"

  # kube-proxy makes the Services work, the kubernetes one first: pods reach
  # the API server at its ClusterIP, as in every cluster. conntrack: leave
  # the kernel's (global) settings alone.
  log "kube-proxy (iptables, in this network namespace)"
  cat >"$E2E/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $E2E/admin.kubeconfig}
hostnameOverride: $NODE
mode: iptables
clusterCIDR: $POD_CIDR
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
  start_bg kube-proxy "$BIN/kube-proxy" --config "$E2E/kube-proxy.yaml" --v 2
  wait_for "kube-proxy healthy" 60 curl -sf http://127.0.0.1:10256/healthz

  log "snapshot CRDs and snapshot-controller (external-snapshotter, the cluster's part)"
  kc apply --server-side -f "$BIN/crd" >"$E2E/logs/apply-crds.log"
  wait_for "snapshot CRDs established" 60 kc wait --for condition=established --timeout=5s \
    crd/volumesnapshots.snapshot.storage.k8s.io crd/volumegroupsnapshots.groupsnapshot.storage.k8s.io
  start_bg snapshot-controller "$BIN/snapshot-controller" --kubeconfig "$E2E/admin.kubeconfig" \
    --feature-gates=CSIVolumeGroupSnapshot=true --leader-election=false --retry-interval-max=5s --v=3

  # The controller and the node plugin run as the two cephx users the README
  # tells operators to make.
  CEPH_ARGS="-c $CEPH_CONF --keyring $CEPH_KEYRING" "$ROOT/deploy/ceph-users.sh" "$E2E/users" \
    volumes-a volumes-b images:ro >"$E2E/logs/ceph-users.log"
  # The same configuration, with this host's paths, for basalt-csi's
  # command-line tools the tests run here (attachments, snapshots, check).
  backends "$CEPH_CONF" "$E2E/users" >"$E2E/basalt.yaml"

  log "deploy/kubernetes as shipped (kustomize), on this cluster's Ceph and images"
  deploy_basalt
  kc -n $NS wait --for condition=available --timeout=170s deployment/basalt-controller >/dev/null ||
    { log "the controller Deployment is not available; see $E2E/pod-logs"; return 1; }
  wait_for "CSINode with $DRIVER" 180 sh -c "'$BIN/kubectl' --kubeconfig '$E2E/admin.kubeconfig' get csinode $NODE -o jsonpath='{.spec.drivers[*].name}' | grep -q $DRIVER"
  log "ready: KUBECONFIG=$E2E/admin.kubeconfig"
  echo "KUBECONFIG=$E2E/admin.kubeconfig"
  echo "KUBELET_ROOT=$KUBELET_ROOT"
  echo "NODE_STATE=$NODE_STATE"
  echo "E2E=$E2E"
}

cmd_stop() {
  [ -d "$E2E/pids" ] || return 0
  local name pid c=$E2E/containerd
  for name in snapshot-controller kubelet; do stop_pid "$name"; done
  # Every container of our containerd (the node plugin's rbd-fuse daemons
  # with it), then containerd, then the control plane.
  if [ -S "$c/containerd.sock" ]; then
    local ctr=("$BIN/ctr" -a "$c/containerd.sock" -n k8s.io)
    for name in $(timeout 20 "${ctr[@]}" tasks ls -q 2>/dev/null); do
      timeout 20 "${ctr[@]}" tasks kill -a -s SIGKILL "$name" >/dev/null 2>&1 || true
    done
    for name in $(timeout 20 "${ctr[@]}" tasks ls -q 2>/dev/null); do
      timeout 20 "${ctr[@]}" tasks delete -f "$name" >/dev/null 2>&1 || true
    done
    for name in $(timeout 20 "${ctr[@]}" containers ls -q 2>/dev/null); do
      timeout 20 "${ctr[@]}" containers delete "$name" >/dev/null 2>&1 || true
    done
  fi
  for name in containerd kube-proxy kube-scheduler kube-controller-manager kube-apiserver etcd; do stop_pid "$name"; done
  # What a failed run may leave: rbd-fuse daemons of the node plugin (ended
  # by PID, found by their mount point under the state directory and their
  # mount namespace, ours), the kubelet's, containerd's and our own mounts,
  # loop devices on our FUSE files, the CNI bridge.
  for pid in $(pgrep -x rbd-fuse || true); do
    [ "$(readlink "/proc/$pid/ns/mnt")" = "$(readlink /proc/self/ns/mnt)" ] || continue
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -F "$NODE_STATE/" >/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
  done
  # Loop devices first: once their FUSE mount is lazily unmounted, their
  # backing path no longer names our directory.
  { timeout 20 losetup --list --noheadings --output NAME,BACK-FILE 2>/dev/null || true; } | awk -v d="$NODE_STATE/" 'index($2, d) == 1 {print $1}' |
    while read -r dev; do timeout 20 losetup -d "$dev" 2>/dev/null || true; done
  local b m
  for b in "${BINDS[@]}"; do
    ours "$b" || continue
    { grep -F " ${b#*:}/" /proc/self/mountinfo || true; } | awk '{print $5}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    umount -l "${b#*:}" || true
  done
  { grep -F " $E2E/" /proc/self/mountinfo || true; } | awk '{print $5}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  # Made for the binds above, if nothing else uses them.
  rmdir "$KUBELET_ROOT" "$NODE_STATE" /var/log/containers 2>/dev/null || true
  # containerd's cgroups (its CRI parent, /k8s.io, in every hierarchy; only
  # empty ones can go): cgroups are the one thing not in our namespaces. The
  # bridges and kube-proxy's and the kubelet's iptables chains go with the
  # network namespace.
  local cg
  for cg in /sys/fs/cgroup/*/k8s.io /sys/fs/cgroup/k8s.io; do
    [ -d "$cg" ] || continue
    find "$cg" -mindepth 1 -depth -type d -exec rmdir {} + 2>/dev/null || true
    rmdir "$cg" 2>/dev/null || true
  done
}

stop_pid() { # stop_pid NAME: TERM, then KILL, the process we started as NAME
  local pid
  [ -f "$E2E/pids/$1" ] || return 0
  pid=$(cat "$E2E/pids/$1")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$E2E/pids/$1"
}

case "${1:-}" in
net) cmd_net ;;
start) cmd_start ;;
stop) cmd_stop ;;
*)
  echo "usage: $0 net|start|stop" >&2
  exit 2
  ;;
esac
