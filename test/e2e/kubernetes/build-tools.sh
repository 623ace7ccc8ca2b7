#!/usr/bin/env bash
# Builds (once, cached by version) every binary the real-Kubernetes e2e test
# needs: kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
# kube-proxy, kubectl, etcd, csi-provisioner, csi-attacher, csi-snapshotter, csi-resizer,
# snapshot-controller (with the snapshot CRDs), containerd (with its runc
# shim, ctr and crictl), this repository's registrar, livenessprobe and nullcsi
# (bench-k8s's control driver), and the
# upstream storage suite: e2e.test (`go test -c` of tools/storagee2e, which is
# k8s.io/kubernetes/test/e2e's main with the storage tests only) with the
# ginkgo runner of the same version (parallel runs) and agnhost,
# the image its helper pods run.
#
# Cache: ${BASALT_K8S_CACHE:-$HOME/.cache/basalt-e2e}/<key>/bin, where <key>
# encodes every pinned version plus a hash of the tools module
# (test/e2e/kubernetes/tools: go.mod, go.sum, *.go) and of the list of
# binaries. If every binary is
# there already, nothing is built. Progress goes to stderr; the last line of
# stdout is BIN=<absolute bin dir>, for `eval "$(build-tools.sh | tail -n1)"`.
#
# Two parts, each with its own lock: `build-tools.sh cluster` builds what
# the cluster and Basalt's own e2e tests run; `build-tools.sh suite` (after
# the cluster part) adds e2e.test and ginkgo, which only TestUpstreamStorage,
# the last test, needs. `make e2e` waits for the first and builds the second
# in the background while its own tests run: on a cold machine that takes
# the suite's build (~5 min) off the critical path. No argument: both.
#
# See docs in /work/shared/design/kubernetes-e2e.md for why it is built this
# way (restricted module proxy, replace blocks, version ldflags).
set -euo pipefail

PART=${1:-all}
case $PART in cluster | suite | all) ;; *) echo "usage: $0 [cluster|suite|all]" >&2; exit 2 ;; esac

K8S_VERSION=v1.36.3           # k8s.io/kubernetes; staging modules at v0.36.3 (tools/go.mod)
ETCD_VERSION=v3.6.8           # go.etcd.io/etcd/server/v3 (tools/go.mod)
# The CSI sidecars are required by the tools module too (tools/sidecars.go),
# so they are built against the same staging modules and dependencies as
# Kubernetes: one compile of client-go, grpc and the rest serves them all
# (each built from its own module, they took ~17 min of a cold build). Their
# versions are the ones for Kubernetes 1.36 (client-go v0.36.x).
PROV_VERSION=v6.3.0           # external-provisioner/v6; v6.4.0 cannot be built from this proxy
ATT_VERSION=v4.12.0           # external-attacher/v4; v4.13.0 is built on Kubernetes 1.37's libraries
SNAP_CLIENT_MOD=github.com/kubernetes-csi/external-snapshotter/client/v8
SNAP_VERSION=v8.6.0           # csi-snapshotter, snapshot-controller and the CRDs
RSZ_VERSION=v2.2.0            # external-resizer/v2; v2.2.1 is not served by this proxy
CTRD_MOD=github.com/containerd/containerd/v2
CTRD_VERSION=v2.4.2           # Kubernetes >= 1.36 needs containerd 2.x; Debian 12 has 1.6
CRICTL_MOD=sigs.k8s.io/cri-tools
CRICTL_VERSION=v1.37.0        # crictl: the CRI's view of the containers (v1.35.0 is not served)
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl
	etcd csi-provisioner csi-attacher csi-snapshotter snapshot-controller csi-resizer
	containerd containerd-shim-runc-v2 ctr crictl registrar livenessprobe nullcsi e2e.test ginkgo agnhost)
SUITE=(e2e.test ginkgo) # the rest is the cluster part

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOOLS_DIR=$SCRIPT_DIR/tools

log() { printf '%s build-tools: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

tools_hash() { # the tools module and the list of binaries
	(cd "$TOOLS_DIR" && {
		find . \( -name go.mod -o -name go.sum -o -name '*.go' \) -type f -print0 |
			LC_ALL=C sort -z | xargs -0 sha256sum
		echo "${BINARIES[*]}"
	} | sha256sum | cut -c1-12)
}

KEY="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_prov-${PROV_VERSION}_att-${ATT_VERSION}_snap-${SNAP_VERSION}_rsz-${RSZ_VERSION}_ctrd-${CTRD_VERSION}_crictl-${CRICTL_VERSION}_tools-$(tools_hash)"
CACHE_ROOT=${BASALT_K8S_CACHE:-$HOME/.cache/basalt-e2e}
mkdir -p "$CACHE_ROOT"
CACHE_ROOT=$(cd "$CACHE_ROOT" && pwd)
BIN=$CACHE_ROOT/$KEY/bin

has() { # has BINARY...: all of them are in the cache
	local b
	for b in "$@"; do
		[[ -x $BIN/$b ]] || return 1
	done
}
cluster_complete() {
	local b
	for b in "${BINARIES[@]}"; do
		[[ " ${SUITE[*]} " == *" $b "* ]] || has "$b" || return 1
	done
	[[ -f $BIN/crd/snapshot.storage.k8s.io_volumesnapshots.yaml ]]
}
suite_complete() { has "${SUITE[@]}"; }

# lock FD NAME: one builder of a part per key at a time; a second caller
# waits (fd 9 for the cluster part, 8 for the suite) and then finds the
# cache. unlock FD as soon as the part is done: a builder of both parts must
# not keep the cluster part's waiters waiting for the suite.
lock() {
	local fd=$1 name=$2
	eval "exec $fd>\"\$CACHE_ROOT/.\$KEY.$name.lock\""
	if ! flock -n "$fd"; then
		log "another build of the $name part of $KEY is running; waiting for it"
		flock "$fd"
	fi
}
unlock() { eval "exec $1>&-"; }

# Each build runs as a background job in its own process group (set -m), so a
# signal to this script stops the go build it started, and the EXIT trap
# removes the half-built work dirs: nothing is moved into the cache unless
# every binary of the part was built.
set -m
CHILD=
WORKS=()
stop_child() { [[ -z $CHILD ]] || kill -TERM -- "-$CHILD" 2>/dev/null || true; }
trap 'rm -rf "${WORKS[@]}"' EXIT
trap 'stop_child; exit 130' INT
trap 'stop_child; exit 143' TERM
new_work() { # new_work NAME: a fresh work dir for a part (we hold its lock)
	rm -rf "$CACHE_ROOT/.$KEY.$1.tmp."* # left by a killed build
	WORK=$(mktemp -d "$CACHE_ROOT/.$KEY.$1.tmp.XXXXXX")
	WORKS+=("$WORK")
	mkdir -p "$WORK/bin"
}

# A clean, reproducible Go environment: not the caller's GOFLAGS (the project's
# Makefile exports -tags=pacific), no workspace, no toolchain downloads.
unset GOFLAGS GOWORK GOOS GOARCH
export GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0
GO=${GO:-go}
BUILD=(nice -n 10 "$GO" build -p 2 -trimpath -buildvcs=false)
TESTBUILD=(nice -n 10 "$GO" test -c -p 2 -trimpath -buildvcs=false)

ver_flags() { # gitVersion for k8s.io/component-base and k8s.io/client-go
	local v=$1 major minor pkg out=""
	major=${v#v}; major=${major%%.*}
	minor=${v#v*.}; minor=${minor%%.*}
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		out+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
	done
	echo "$out"
}

declare -A TIMES
step() { # step NAME CMD... : run CMD, record and log its wall time
	local name=$1 t0=$SECONDS
	shift
	log "building $name ..."
	"$@" &
	CHILD=$!
	wait "$CHILD"
	CHILD=
	TIMES[$name]=$((SECONDS - t0))
	log "built $name in ${TIMES[$name]} s"
}

build_tools_module() { # build_tools_module OUT [-ldflags-extra FLAGS] PKG...: OUT is a file, or a dir ending in /
	local out=$1 extra=""
	shift
	if [[ ${1:-} == -ldflags-extra ]]; then
		extra=" $2"
		shift 2
	fi
	(cd "$TOOLS_DIR" && "${BUILD[@]}" -ldflags "-s -w$(ver_flags "$K8S_VERSION")$extra" -o "$out" "$@")
}

sidecar() { # sidecar NAME VERSION PKG: a CSI sidecar from the tools module, its version stamped
	local mod have
	mod=${3%/cmd/*}
	have=$(cd "$TOOLS_DIR" && "$GO" list -m -f '{{.Version}}' "$mod")
	[[ $have == "$2" ]] || { log "tools/go.mod has $mod $have, not $2"; return 1; }
	build_tools_module "$WORK/bin/$1" -ldflags-extra "-X main.version=$2" "$3"
}

summary() { # the wall time of each step built
	local k out=""
	for k in "$@"; do
		[[ -z ${TIMES[$k]:-} ]] || out+=" $k=${TIMES[$k]}s"
	done
	echo "$out"
}

build_cluster() {
	cluster_complete && return
	lock 9 cluster
	if cluster_complete; then
		unlock 9
		return
	fi
	new_work cluster
	local t0=$SECONDS
	log "building the cluster part of $KEY into $BIN (cold Go build cache: ~30 min on 2 cores; warm: ~35 s)"
	step kubernetes build_tools_module "$WORK/bin/" \
		k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
		k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy \
		k8s.io/kubernetes/cmd/kubectl
	step csi-provisioner sidecar csi-provisioner "$PROV_VERSION" github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner
	step csi-attacher sidecar csi-attacher "$ATT_VERSION" github.com/kubernetes-csi/external-attacher/v4/cmd/csi-attacher
	step csi-resizer sidecar csi-resizer "$RSZ_VERSION" github.com/kubernetes-csi/external-resizer/v2/cmd/csi-resizer
	step csi-snapshotter sidecar csi-snapshotter "$SNAP_VERSION" github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter
	step snapshot-controller sidecar snapshot-controller "$SNAP_VERSION" github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller
	step agnhost build_tools_module "$WORK/bin/" k8s.io/kubernetes/test/images/agnhost
	step etcd build_tools_module "$WORK/bin/etcd" go.etcd.io/etcd/server/v3
	step tools build_tools_module "$WORK/bin/" ./registrar ./livenessprobe ./nullcsi
	step containerd env -C "$WORK" GOBIN="$WORK/bin" "$GO" install \
		"$CTRD_MOD/cmd/containerd@$CTRD_VERSION" "$CTRD_MOD/cmd/containerd-shim-runc-v2@$CTRD_VERSION" "$CTRD_MOD/cmd/ctr@$CTRD_VERSION"
	step crictl env -C "$WORK" GOBIN="$WORK/bin" "$GO" install "$CRICTL_MOD/cmd/crictl@$CRICTL_VERSION"
	# The snapshot CRDs come from the client module (same tag, in tools/go.mod).
	local crd_dir b
	crd_dir=$(cd "$TOOLS_DIR" && "$GO" mod download -json "$SNAP_CLIENT_MOD@$SNAP_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	[[ -n $crd_dir && -d $crd_dir/config/crd ]] || { log "cannot download $SNAP_CLIENT_MOD@$SNAP_VERSION"; return 1; }
	mkdir -p "$WORK/bin/crd"
	cp "$crd_dir"/config/crd/*.yaml "$WORK/bin/crd/"
	rm -f "$WORK/bin/crd/kustomization.yaml"
	for b in "${BINARIES[@]}"; do
		[[ " ${SUITE[*]} " == *" $b "* || -x $WORK/bin/$b ]] || { log "missing $b after build"; return 1; }
	done
	mkdir -p "$CACHE_ROOT/$KEY"
	rm -rf "$BIN"
	mv "$WORK/bin" "$BIN"
	unlock 9
	log "cluster part done in $((SECONDS - t0)) s:$(summary kubernetes csi-provisioner csi-attacher csi-resizer csi-snapshotter snapshot-controller agnhost etcd tools containerd crictl)"
}

build_suite() { # after build_cluster: the binaries go into its directory
	suite_complete && return
	lock 8 suite
	if suite_complete; then
		unlock 8
		return
	fi
	new_work suite
	local t0=$SECONDS
	log "building the suite part of $KEY into $BIN (cold: ~5 min)"
	# The storage suites only (tools/storagee2e): e2e.test's own main,
	# without the other SIGs' tests.
	step e2e.test env -C "$TOOLS_DIR" "${TESTBUILD[@]}" -ldflags "-s -w$(ver_flags "$K8S_VERSION")" \
		-o "$WORK/bin/e2e.test" ./storagee2e
	step ginkgo build_tools_module "$WORK/bin/" github.com/onsi/ginkgo/v2/ginkgo
	# e2e.test last: its presence with ginkgo's is what suite_complete checks.
	mv "$WORK/bin/ginkgo" "$BIN/ginkgo"
	mv "$WORK/bin/e2e.test" "$BIN/e2e.test"
	unlock 8
	log "suite part done in $((SECONDS - t0)) s:$(summary e2e.test ginkgo)"
}

build_cluster
[[ $PART == cluster ]] || build_suite
echo "BIN=$BIN"
