#!/usr/bin/env bash
# Builds Basalt's container image from the Dockerfile without Docker and
# without a registry (`make image`): the two base images the Dockerfile
# names (a Go toolchain on Debian 12, and Debian 12 itself) are made here
# from Debian packages, then buildah builds the Dockerfile on them, as
# `docker build` would on golang:1.26-bookworm and debian:12-slim.
#
#   deploy/image.sh OUT.tar [TAG]     OCI archive of TAG (default localhost/basalt-csi:dev)
#   deploy/image.sh scratch OUT.tar NAME ENTRYPOINT-JSON FILES...   (below)
#   deploy/image.sh debian OUT.tar NAME        the Debian base, named NAME
#
# The bases are cached by what they are made of (Debian suite and sources,
# the Go version), in $BASALT_IMAGE_CACHE (default ~/.cache/basalt-images).
# The module and build caches of the host's Go are lent to the build stage,
# so a warm build compiles only what changed.
set -euo pipefail

out=${1:?usage: deploy/image.sh OUT.tar [TAG]}
tag=${2:-localhost/basalt-csi:dev}
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${BASALT_IMAGE_CACHE:-$HOME/.cache/basalt-images}
suite=bookworm
sources=/etc/apt/sources.list.d/debian.sources
[ -f "$sources" ] || sources=/etc/apt/sources.list
mkdir -p "$cache" "$(dirname "$out")"
log() { echo "image: $*" >&2; }

# buildah keeps its images and containers in a private store here, not in
# the host's /var/lib/containers.
store=(--root "$cache/storage" --runroot "$cache/run" --storage-driver vfs)

# oci_archive ROOTFS.tar NAME OUT.tar [ENTRYPOINT-JSON]: one uncompressed
# layer, as an OCI image layout in a tar (what buildah reads as
# oci-archive:, and `ctr images import` imports).
oci_archive() {
  local rootfs=$1 name=$2 dest=$3 entry=${4:-} d
  d=$(mktemp -d)
  mkdir -p "$d/blobs/sha256"
  local layer; layer=$(sha256sum "$rootfs" | cut -d' ' -f1)
  cp "$rootfs" "$d/blobs/sha256/$layer"
  local size; size=$(stat -c %s "$rootfs")
  printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]%s},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "${entry:+,\"Entrypoint\":$entry}" "$layer" >"$d/config.json"
  local cfg; cfg=$(sha256sum "$d/config.json" | cut -d' ' -f1)
  mv "$d/config.json" "$d/blobs/sha256/$cfg"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$cfg" "$(stat -c %s "$d/blobs/sha256/$cfg")" "$layer" "$size" >"$d/manifest.json"
  local man; man=$(sha256sum "$d/manifest.json" | cut -d' ' -f1)
  local mansize; mansize=$(stat -c %s "$d/manifest.json")
  mv "$d/manifest.json" "$d/blobs/sha256/$man"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
    "$man" "$mansize" "$name" >"$d/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$d/oci-layout"
  tar -C "$d" -cf "$dest.tmp" oci-layout index.json blobs
  mv "$dest.tmp" "$dest"
  rm -rf "$d"
}

# deploy/image.sh scratch OUT.tar NAME ENTRYPOINT-JSON SRC:DEST|tree:DIR...
# makes an image of just those files (static binaries: the sidecars the
# Kubernetes e2e builds from their Go modules, a pause process, busybox).
if [ "$out" = scratch ]; then
  shift
  dest=$1 name=$2 entry=$3
  shift 3
  d=$(mktemp -d)
  mkdir "$d/root"
  for spec in "$@"; do
    if [[ $spec == tree:* ]]; then
      cp -a "${spec#tree:}/." "$d/root/"
    else
      mkdir -p "$d/root/$(dirname "${spec#*:}")"
      cp -L "${spec%%:*}" "$d/root/${spec#*:}"
    fi
  done
  tar -C "$d/root" --owner=0 --group=0 -cf "$d/layer.tar" .
  oci_archive "$d/layer.tar" "$name" "$dest" "$entry"
  rm -rf "$d"
  exit 0
fi

# Debian 12 minbase, the runtime base (debian:12-slim's role).
key=$( (cat "$sources"; echo slim-1) | sha256sum | cut -c1-12)
base="$cache/debian-$suite-minbase-$key.tar"
if [ ! -f "$base" ]; then
  log "Debian $suite minbase (mmdebstrap, sources $sources)"
  tmp=$(mktemp -d)
  # As debian:12-slim: no manuals, documentation (but the copyrights) or
  # translations, now or in later installs; no apt lists or caches.
  mmdebstrap --variant=minbase --quiet \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    "$suite" "$tmp/rootfs.tar" "$sources"
  oci_archive "$tmp/rootfs.tar" "debian:$suite" "$base"
  rm -rf "$tmp"
fi

# deploy/image.sh debian OUT.tar NAME: that base under another name (the
# Kubernetes e2e's stand-in for images of a GNU userland).
if [ "$out" = debian ]; then
  dest=${2:?} name=${3:?}
  d=$(mktemp -d)
  tar -C "$d" -xf "$base"
  layer=$(sed -n 's/.*"layers":\[{[^}]*"digest":"sha256:\([0-9a-f]*\)".*/\1/p' "$d/blobs/sha256/$(sed -n 's/.*"digest":"sha256:\([0-9a-f]*\)".*/\1/p' "$d/index.json")")
  oci_archive "$d/blobs/sha256/$layer" "$name" "$dest"
  rm -rf "$d"
  exit 0
fi

# The same plus this host's Go (golang:1.26-bookworm's role); GOPATH /go as
# in the golang images. It trusts the CAs this host trusts, so that its
# `go mod download` reaches the module proxy the way the host's go does.
gover=$(go env GOVERSION)
cabundle=/etc/ssl/certs/ca-certificates.crt
gobase="$cache/golang-$gover-$suite-$key-$(sha256sum "$cabundle" | cut -c1-8).tar"
if [ ! -f "$gobase" ]; then
  log "Go $gover on Debian $suite"
  ctr=$(buildah "${store[@]}" from --pull-never "oci-archive:$base")
  buildah "${store[@]}" copy "$ctr" "$(go env GOROOT)" /usr/local/go >/dev/null
  buildah "${store[@]}" copy "$ctr" "$cabundle" /etc/ssl/certs/ca-certificates.crt >/dev/null
  buildah "${store[@]}" config --env PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env GOPATH=/go "$ctr"
  buildah "${store[@]}" commit --quiet "$ctr" "oci-archive:$gobase.tmp:golang:$gover" >/dev/null
  buildah "${store[@]}" rm "$ctr" >/dev/null
  mv "$gobase.tmp" "$gobase"
fi

log "building $tag from the Dockerfile (buildah, chroot isolation)"
version=$(git -C "$root" describe --always --dirty 2>/dev/null || echo dev)
buildah "${store[@]}" bud --quiet --isolation chroot --pull-never --layers=false \
  --build-arg "GO_IMAGE=oci-archive:$gobase" --build-arg "BASE_IMAGE=oci-archive:$base" \
  --build-arg "VERSION=$version" \
  -v "$(go env GOMODCACHE):/go/pkg/mod" -v "$(go env GOCACHE):/root/.cache/go-build" \
  -t "$tag" -f "$root/Dockerfile" "$root" >/dev/null
# The image works: its binary runs (its shared libraries are there), and
# every command the node plugin runs (mount-utils adds mkfs, fsck, blkid,
# xfs_growfs) is on its PATH.
log "checking $tag"
ctr=$(buildah "${store[@]}" from --pull-never "$tag")
buildah "${store[@]}" run --isolation chroot "$ctr" -- /usr/local/bin/basalt-csi --version >/dev/null
buildah "${store[@]}" run --isolation chroot "$ctr" -- sh -c '
  for t in rbd rbd-nbd rbd-fuse fusermount losetup blkid mount umount mkfs.ext4 e2fsck dumpe2fs resize2fs mkfs.xfs xfs_repair xfs_growfs; do
    command -v "$t" >/dev/null || { echo "the image lacks $t" >&2; exit 1; }
  done'
rm -f "$out"
buildah "${store[@]}" push --quiet "$tag" "oci-archive:$out:$tag"
# Keep only the two bases (the store's copies are remade from them in seconds).
buildah "${store[@]}" rm --all >/dev/null 2>&1 || true
buildah "${store[@]}" rmi --all --force >/dev/null 2>&1 || true
find "$cache" -maxdepth 1 -name '*.tar' ! -name "$(basename "$base")" ! -name "$(basename "$gobase")" -delete
log "$tag: $out ($(du -m "$out" | cut -f1) MiB)"
