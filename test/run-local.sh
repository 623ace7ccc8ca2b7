#!/usr/bin/env bash
# `make run`: a local Ceph cluster, a golden image, a config, and basalt-csi
# serving every service on a unix socket in the foreground. Ctrl-C stops the
# driver and the cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${BASALT_OUTPUT:-$PWD/_output}
run=$out/run
mkdir -p "$run"

eval "$(test/ceph-cluster.sh start local)"
trap 'test/ceph-cluster.sh stop local' EXIT
test/ceph-cluster.sh create-pool local volumes
test/ceph-cluster.sh create-pool local images
test/golden-image.sh "$CEPH_CONF" images golden v1

cat > "$run/config.yaml" <<YAML
backends:
  - name: local
    cephConf: $CEPH_CONF
    user: admin
    keyring: $CEPH_KEYRING
    pool: volumes
    zone: zone-a
    # The demo OSD is an 8 GiB memstore and volumes are thin: allow 100x so
    # conformance runs (64 volumes of 10 GiB for the attach limit) fit.
    maxOverSubscriptionRatio: 100
    capabilities: {tier: standard}
YAML

sock=$run/csi.sock
cat <<MSG

Basalt is starting on unix://$sock (Ctrl-C to stop).
Talk to it with csc (bin/csc; make csc builds it), for example:

  export CSI_ENDPOINT=unix://$sock PATH=\$PATH:$PWD/bin
  csc identity plugin-info
  csc controller create-volume --cap SINGLE_NODE_WRITER,mount,ext4 \\
      --params image=images/golden@v1 --req-bytes 1073741824 demo-volume
  csc controller list-volumes
  csc controller get-capacity
  csc controller delete-volume <volume id>

Config: $run/config.yaml   Ceph: CEPH_CONF=$CEPH_CONF (rbd -c \$CEPH_CONF ls volumes)

MSG
bin/basalt-csi --mode=all --endpoint "unix://$sock" --config "$run/config.yaml" --node-id "$(hostname)" --zone zone-a --state-dir "$run/state"
