#!/usr/bin/env bash
# Create (or update) Basalt's two cephx users in one Ceph cluster and write
# their keyrings: a controller user and a least-privilege node-plugin user.
#
#   deploy/ceph-users.sh OUTDIR POOL[:ro] [POOL[:ro]...]
#
# POOL: every pool Basalt uses in this cluster: its backends' pools, the
# registry backend's pool and the pools of golden images. Mark a pool that
# only holds golden images with :ro (e.g. images:ro): node plugins only read
# it (a clone's copy-up reads the parent and writes the clone), so a
# compromised node cannot corrupt the images every new volume starts from. Run it with admin
# access to the cluster (ceph's usual CEPH_ARGS, e.g. CEPH_ARGS="-c
# /etc/ceph/ceph.conf"); it writes OUTDIR/ceph.client.basalt-controller.keyring
# and OUTDIR/ceph.client.basalt-node.keyring (mode 0600). Idempotent: a user
# that exists gets these caps again and keeps its key.
#
# The node user can map and use any image of the read-write pools (read and
# write its data; librbd's class methods on headers, data and object maps)
# and register its node (the basalt.nodes object). It cannot create, clone,
# rename or remove images (the directory and id objects are read-only to
# it), nor change Basalt's records (names, volume index, attachments,
# snapshots). What object-prefix caps cannot prevent is written in the
# README, "Ceph users". The integration tests run every node plugin as this
# user and check those refusals.
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 OUTDIR POOL [POOL...]" >&2
  exit 2
fi
out=$1
shift
timeout=${BASALT_CEPH_CMD_TIMEOUT:-30}

ctl_osd= ctl_mgr= node_osd=
for arg in "$@"; do
  p=${arg%:ro}
  ctl_osd+="${ctl_osd:+, }profile rbd pool=$p"
  ctl_mgr+="${ctl_mgr:+, }profile rbd pool=$p"
  node_osd+="${node_osd:+, }allow r class-read pool=$p"
  [ "$arg" = "$p:ro" ] && continue
  for prefix in rbd_header. rbd_data. rbd_object_map.; do
    node_osd+=", allow rwx pool=$p object_prefix $prefix"
  done
  # Basalt's records live in the RADOS namespace "basalt".
  node_osd+=", allow rw pool=$p namespace=basalt object_prefix basalt.nodes"
done

# user NAME CAPS...: create or update NAME with exactly CAPS and write its keyring.
user() {
  local name=$1
  shift
  local verb=get-or-create msg
  if timeout "$timeout" ceph auth get "client.$name" >/dev/null 2>&1; then
    verb=caps
  fi
  if ! msg=$(timeout "$timeout" ceph auth "$verb" "client.$name" "$@" 2>&1); then
    echo "ceph auth $verb client.$name: $msg" >&2
    exit 1
  fi
  (umask 077 && timeout "$timeout" ceph auth get "client.$name" -o "$out/ceph.client.$name.keyring.tmp" 2>/dev/null)
  mv "$out/ceph.client.$name.keyring.tmp" "$out/ceph.client.$name.keyring"
  echo "client.$name -> $out/ceph.client.$name.keyring"
}

mkdir -p "$out"
user basalt-controller mon 'profile rbd' osd "$ctl_osd" mgr "$ctl_mgr"
user basalt-node mon 'profile rbd' osd "$node_osd"
