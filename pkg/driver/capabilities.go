package driver

import (
	"github.com/container-storage-interface/spec/lib/go/csi"
)

// validateCapabilities checks that every requested capability is one Basalt
// serves: mount or block access, and an access mode RBD can honour.
// MULTI_NODE_MULTI_WRITER is raw block only: no filesystem Basalt formats is
// safe to mount read-write on two nodes.
func validateCapabilities(caps []*csi.VolumeCapability) error {
	if len(caps) == 0 {
		return invalid("volume_capabilities are required")
	}
	for _, c := range caps {
		if reason := unsupported(c); reason != "" {
			return invalid("unsupported volume capability: %s", reason)
		}
	}
	return nil
}

func unsupported(c *csi.VolumeCapability) string {
	if c == nil {
		return "empty capability"
	}
	block, mount := c.GetBlock() != nil, c.GetMount() != nil
	if block == mount {
		return "access_type must be exactly one of block or mount"
	}
	if mount {
		switch fs := c.GetMount().GetFsType(); fs {
		case "", "ext4", "xfs":
		default:
			return "fs_type " + fs + " (ext4 and xfs are supported)"
		}
	}
	if c.GetAccessMode() == nil {
		return "access_mode is required"
	}
	switch m := c.GetAccessMode().GetMode(); m {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER,
		csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY,
		csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER:
	case csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER:
		if !block {
			return "MULTI_NODE_MULTI_WRITER is supported for block volumes only"
		}
	default:
		return "access mode " + m.String()
	}
	return ""
}

// validateCapability checks the single volume_capability of publish and
// stage requests: required, and one Basalt serves.
func validateCapability(vc *csi.VolumeCapability) error {
	if vc == nil {
		return invalid("volume_capability is required")
	}
	return validateCapabilities([]*csi.VolumeCapability{vc})
}

// MinXFSBytes is the smallest volume mkfs.xfs formats: xfsprogs >= 5.19
// (Debian 12 has 6.1) refuses filesystems under 300 MB.
const MinXFSBytes = 300 << 20

// minBytes is the smallest size a new volume with these capabilities can be
// used at: MinXFSBytes when one of them mounts it as xfs, else 0. A smaller
// request is rounded up to it (CSI lets a driver give more than
// required_bytes) rather than made and left to fail at the first stage.
func minBytes(caps []*csi.VolumeCapability) int64 {
	for _, c := range caps {
		if c.GetMount().GetFsType() == "xfs" {
			return MinXFSBytes
		}
	}
	return 0
}
