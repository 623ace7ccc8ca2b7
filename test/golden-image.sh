#!/usr/bin/env bash
# Creates a small golden image: an ext4 filesystem holding /golden.txt,
# imported as POOL/NAME, snapshotted as SNAP and protected so it can be
# cloned. The filesystem is built with `mkfs.ext4 -d` from a directory, so
# no kernel mapping or mount is needed. Idempotent.
#
# usage: test/golden-image.sh CEPH_CONF POOL NAME SNAP [SIZE_MB] [TEXT]
set -euo pipefail
conf=$1 pool=$2 name=$3 snap=$4 size=${5:-64} text=${6:-"hello from the basalt golden image"}
rbd() { timeout 60 /usr/bin/rbd -c "$conf" "$@"; }

if rbd snap ls "$pool/$name" 2>/dev/null | awk '{print $2}' | grep -x "$snap" >/dev/null; then
  rbd snap protect "$pool/$name@$snap" 2>/dev/null || true
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/root"
printf '%s\n' "$text" > "$work/root/golden.txt"
truncate -s "${size}M" "$work/fs.img"
mkfs.ext4 -q -F -L golden -E nodiscard -d "$work/root" "$work/fs.img"
rbd rm "$pool/$name" >/dev/null 2>&1 || true
rbd import --no-progress --image-feature layering "$work/fs.img" "$pool/$name" >/dev/null
rbd snap create --no-progress "$pool/$name@$snap"
rbd snap protect "$pool/$name@$snap"
echo "golden image $pool/$name@$snap ($size MiB ext4 with golden.txt)" >&2
