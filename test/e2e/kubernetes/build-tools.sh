#!/usr/bin/env bash
# Builds (once, cached by version) every binary the real-Kubernetes e2e test
# needs: kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
# kube-proxy, kubectl, etcd, csi-provisioner, csi-attacher, csi-snapshotter, csi-resizer,
# snapshot-controller (with the snapshot CRDs), containerd (with its runc
# shim, ctr and crictl), this repository's registrar and livenessprobe, and the
# upstream storage suite: e2e.test (`go test -c` of k8s.io/kubernetes/test/e2e)
# with the ginkgo runner of the same version (parallel runs) and agnhost,
# the image its helper pods run.
#
# Cache: ${BASALT_K8S_CACHE:-$HOME/.cache/basalt-e2e}/<key>/bin, where <key>
# encodes every pinned version plus a hash of the tools module
# (test/e2e/kubernetes/tools: go.mod, go.sum, *.go) and of the list of
# binaries. If every binary is
# there already, nothing is built. Progress goes to stderr; the last line of
# stdout is BIN=<absolute bin dir>, for `eval "$(build-tools.sh | tail -n1)"`.
#
# See docs in /work/shared/design/kubernetes-e2e.md for why it is built this
# way (restricted module proxy, replace blocks, version ldflags).
set -euo pipefail

K8S_VERSION=v1.36.3           # k8s.io/kubernetes; staging modules at v0.36.3 (tools/go.mod)
ETCD_VERSION=v3.6.8           # go.etcd.io/etcd/server/v3 (tools/go.mod)
PROV_MOD=github.com/kubernetes-csi/external-provisioner/v6
PROV_VERSION=v6.3.0           # v6.4.0 cannot be built from this proxy
ATT_MOD=github.com/kubernetes-csi/external-attacher/v4
ATT_VERSION=v4.13.0
SNAP_MOD=github.com/kubernetes-csi/external-snapshotter/v8
SNAP_CLIENT_MOD=github.com/kubernetes-csi/external-snapshotter/client/v8
SNAP_VERSION=v8.6.0           # csi-snapshotter, snapshot-controller and the CRDs
RSZ_MOD=github.com/kubernetes-csi/external-resizer/v2
RSZ_VERSION=v2.2.0            # v2.2.1 is not served by this proxy
CTRD_MOD=github.com/containerd/containerd/v2
CTRD_VERSION=v2.4.2           # Kubernetes >= 1.36 needs containerd 2.x; Debian 12 has 1.6
CRICTL_MOD=sigs.k8s.io/cri-tools
CRICTL_VERSION=v1.37.0        # crictl: the CRI's view of the containers (v1.35.0 is not served)
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl
	etcd csi-provisioner csi-attacher csi-snapshotter snapshot-controller csi-resizer
	containerd containerd-shim-runc-v2 ctr crictl registrar livenessprobe e2e.test ginkgo agnhost)

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

complete() {
	local b
	for b in "${BINARIES[@]}"; do
		[[ -x $BIN/$b ]] || return 1
	done
	[[ -f $BIN/crd/snapshot.storage.k8s.io_volumesnapshots.yaml ]]
}

if complete; then
	echo "BIN=$BIN"
	exit 0
fi

# One builder per key at a time; a second caller waits and then finds the cache.
exec 9>"$CACHE_ROOT/.$KEY.lock"
if ! flock -n 9; then
	log "another build of $KEY is running; waiting for it"
	flock 9
fi
if complete; then
	echo "BIN=$BIN"
	exit 0
fi

rm -rf "$CACHE_ROOT/.$KEY.tmp."* # left by a killed build; we hold the lock
WORK=$(mktemp -d "$CACHE_ROOT/.$KEY.tmp.XXXXXX")
# Each build runs as a background job in its own process group (set -m), so a
# signal to this script stops the go build it started, and the EXIT trap
# removes the half-built work dir: nothing is moved into the cache unless
# every binary was built.
set -m
CHILD=
stop_child() { [[ -z $CHILD ]] || kill -TERM -- "-$CHILD" 2>/dev/null || true; }
trap 'rm -rf "$WORK"' EXIT
trap 'stop_child; exit 130' INT
trap 'stop_child; exit 143' TERM
mkdir -p "$WORK/bin" "$WORK/src"

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

build_tools_module() { # build_tools_module OUT PKG...: OUT is a file, or a dir ending in /
	local out=$1
	shift
	(cd "$TOOLS_DIR" && "${BUILD[@]}" -ldflags "-s -w$(ver_flags "$K8S_VERSION")" -o "$out" "$@")
}

# build_sidecar MOD VERSION CMDPKG BINNAME [CLIENTDIR]: build inside a writable
# copy of the module's source (go install refuses modules with replace
# directives); CLIENTDIR, if given, becomes its ./client.
build_sidecar() {
	local mod=$1 version=$2 pkg=$3 name=$4 dir src
	dir=$(cd "$WORK" && "$GO" mod download -json "$mod@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	[[ -n $dir && -d $dir ]] || { log "cannot download $mod@$version"; return 1; }
	src=$WORK/src/$name
	cp -R "$dir" "$src"
	chmod -R u+w "$src"
	if [[ -n ${5:-} ]]; then # the nested client module a replace points at
		cp -R "$5" "$src/client"
		chmod -R u+w "$src/client"
	fi
	(cd "$src" && GOFLAGS=-mod=mod "${BUILD[@]}" \
		-ldflags "-s -w -X main.version=$version$(ver_flags "$K8S_VERSION")" \
		-o "$WORK/bin/$name" "$pkg")
}

T0=$SECONDS
log "building $KEY into $BIN (cold Go build cache: ~14 min, ~2 GB RAM; warm: ~35 s)"
step kubernetes build_tools_module "$WORK/bin/" \
	k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
	k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy \
	k8s.io/kubernetes/cmd/kubectl
step e2e.test env -C "$TOOLS_DIR" "${TESTBUILD[@]}" -ldflags "-s -w$(ver_flags "$K8S_VERSION")" \
	-o "$WORK/bin/e2e.test" k8s.io/kubernetes/test/e2e
step agnhost build_tools_module "$WORK/bin/" k8s.io/kubernetes/test/images/agnhost github.com/onsi/ginkgo/v2/ginkgo
step etcd build_tools_module "$WORK/bin/etcd" go.etcd.io/etcd/server/v3
step tools build_tools_module "$WORK/bin/" ./registrar ./livenessprobe
step containerd env -C "$WORK" GOBIN="$WORK/bin" "$GO" install \
	"$CTRD_MOD/cmd/containerd@$CTRD_VERSION" "$CTRD_MOD/cmd/containerd-shim-runc-v2@$CTRD_VERSION" "$CTRD_MOD/cmd/ctr@$CTRD_VERSION"
step crictl env -C "$WORK" GOBIN="$WORK/bin" "$GO" install "$CRICTL_MOD/cmd/crictl@$CRICTL_VERSION"
step csi-provisioner build_sidecar "$PROV_MOD" "$PROV_VERSION" ./cmd/csi-provisioner csi-provisioner
step csi-attacher build_sidecar "$ATT_MOD" "$ATT_VERSION" ./cmd/csi-attacher csi-attacher
step csi-resizer build_sidecar "$RSZ_MOD" "$RSZ_VERSION" ./cmd/csi-resizer csi-resizer
# external-snapshotter replaces its client module with ./client, which the
# module zip leaves out: put the client module (same tag) there first. The
# CRDs come from the client module too.
snapshotter_client() {
	local dir
	dir=$(cd "$WORK" && "$GO" mod download -json "$SNAP_CLIENT_MOD@$SNAP_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	[[ -n $dir && -d $dir ]] || { log "cannot download $SNAP_CLIENT_MOD@$SNAP_VERSION"; return 1; }
	mkdir -p "$WORK/bin/crd"
	cp "$dir"/config/crd/*.yaml "$WORK/bin/crd/"
	rm -f "$WORK/bin/crd/kustomization.yaml"
	SNAP_CLIENT_DIR=$dir
}
snapshotter_client
step csi-snapshotter build_sidecar "$SNAP_MOD" "$SNAP_VERSION" ./cmd/csi-snapshotter csi-snapshotter "$SNAP_CLIENT_DIR"
step snapshot-controller build_sidecar "$SNAP_MOD" "$SNAP_VERSION" ./cmd/snapshot-controller snapshot-controller "$SNAP_CLIENT_DIR"

for b in "${BINARIES[@]}"; do
	[[ -x $WORK/bin/$b ]] || { log "missing $b after build"; exit 1; }
done
mkdir -p "$CACHE_ROOT/$KEY"
rm -rf "$BIN"
mv "$WORK/bin" "$BIN"
summary=""
for k in kubernetes e2e.test agnhost etcd tools containerd crictl csi-provisioner csi-attacher csi-snapshotter snapshot-controller; do
	summary+=" $k=${TIMES[$k]}s"
done
log "done in $((SECONDS - T0)) s:$summary"
echo "BIN=$BIN"
