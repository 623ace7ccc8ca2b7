package provision

import (
	"context"
	"errors"
	"sort"
	"strconv"
	"strings"

	"github.com/basalt-csi/basalt/pkg/backend"
)

// QoS parameters: StorageClass parameters at create, VolumeAttributesClass
// parameters for ControllerModifyVolume. Each is stored as the image's
// librbd configuration override (image metadata "conf_<option>"), which
// every librbd client (rbd-fuse, rbd-nbd) applies, also while the image is
// open: librbd re-reads it when the metadata changes.
var qosOptions = map[string]string{
	"qosIopsLimit":      "rbd_qos_iops_limit",
	"qosBpsLimit":       "rbd_qos_bps_limit",
	"qosReadIopsLimit":  "rbd_qos_read_iops_limit",
	"qosWriteIopsLimit": "rbd_qos_write_iops_limit",
	"qosReadBpsLimit":   "rbd_qos_read_bps_limit",
	"qosWriteBpsLimit":  "rbd_qos_write_bps_limit",
}

// metaConfPrefix marks image metadata that librbd applies as configuration.
const metaConfPrefix = "conf_"

// IsQoSParam tells whether key is a QoS parameter.
func IsQoSParam(key string) bool { _, ok := qosOptions[key]; return ok }

// QoSParams lists the QoS parameter names, sorted (for messages).
func QoSParams() string {
	names := make([]string, 0, len(qosOptions))
	for k := range qosOptions {
		names = append(names, k)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// QoSMetadata turns QoS parameters into the image metadata to set and the
// keys to remove: a limit of 0 means unlimited, i.e. no override. It fails
// with InvalidArgument on a value that is not a non-negative integer; keys
// that are not QoS parameters are the caller's to refuse.
func QoSMetadata(params map[string]string) (set map[string]string, remove []string, err error) {
	set = map[string]string{}
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		opt, ok := qosOptions[k]
		if !ok {
			continue
		}
		n, perr := strconv.ParseUint(params[k], 10, 64)
		if perr != nil {
			return nil, nil, errorf(InvalidArgument, nil, "parameter %q must be a non-negative integer (0: unlimited), not %q", k, params[k])
		}
		if n == 0 {
			remove = append(remove, metaConfPrefix+opt)
		} else {
			set[metaConfPrefix+opt] = strconv.FormatUint(n, 10)
		}
	}
	return set, remove, nil
}

// Modify is ControllerModifyVolume: it moves the volume where pl asks, if
// its backend does not meet pl (retype, see retype.go), then applies the
// QoS limits in params to its image. Idempotent. A key that is neither a
// QoS parameter nor one the Kubernetes sidecars add is InvalidArgument.
func (p *Provisioner) Modify(ctx context.Context, volumeID string, params map[string]string, pl Placement) error {
	var bad []string
	for k := range params {
		// csi-resizer --extra-modify-metadata adds PVC/PV names: not ours.
		if !IsQoSParam(k) && !strings.HasPrefix(k, "csi.storage.k8s.io/") {
			bad = append(bad, k)
		}
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		return errorf(InvalidArgument, nil, "parameters %s cannot be modified (mutable: %s, backend, capability.<key>)", strings.Join(bad, ", "), QoSParams())
	}
	set, remove, err := QoSMetadata(params)
	if err != nil {
		return err
	}
	if !pl.empty() {
		if err := p.retype(ctx, volumeID, pl); err != nil {
			return err
		}
	}
	id, _, cl, err := p.Lookup(ctx, volumeID)
	if err != nil {
		return err
	}
	if err := cl.SetMetadata(ctx, id.ImageName(), set, remove); err != nil {
		if errors.Is(err, backend.ErrNotFound) {
			return errorf(NotFound, nil, "volume %q does not exist", volumeID)
		}
		return classify(err, "setting the QoS of "+volumeID)
	}
	p.Log.Info("volume modified", "volume", volumeID, "set", set, "removed", remove)
	return nil
}
