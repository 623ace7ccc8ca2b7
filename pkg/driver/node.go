package driver

import (
	"context"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/basalt-csi/basalt/pkg/node"
	"github.com/basalt-csi/basalt/pkg/node/mapper"
	"github.com/basalt-csi/basalt/pkg/provision"
	"github.com/basalt-csi/basalt/pkg/scheduler"
	"github.com/basalt-csi/basalt/pkg/volumeid"
)

// Node implements csi.NodeServer over pkg/node.
type Node struct {
	csi.UnimplementedNodeServer
	NodeID     string
	Zone       string
	MaxVolumes int64
	Svc        *node.Service
}

// NodeLookups returns the Service callbacks that consult Ceph: where a
// volume's image is, how it is attached to this node, which Ceph clients
// have it open, and fencing one of them.
func NodeLookups(p *provision.Provisioner) node.Lookups {
	// No image lookup here: the attachment (checked next) was written by a
	// ControllerPublish that found the image; without one, attachedMode
	// tells a missing volume (NotFound) from an unpublished one.
	locate := func(ctx context.Context, volumeID string) (mapper.Spec, error) {
		id, bname, _, err := p.Lookup(ctx, volumeID)
		if err != nil {
			return mapper.Spec{}, toStatus(err)
		}
		_, b, err := p.Backends.Get(bname)
		if err != nil {
			return mapper.Spec{}, toStatus(err)
		}
		return mapper.Spec{Pool: b.Pool, Image: id.ImageName(), CephConf: b.CephConf, User: b.User, Keyring: b.Keyring}, nil
	}
	attachedMode := func(ctx context.Context, volumeID, nodeID string) (string, error) {
		r, err := p.Attachment(ctx, volumeID, nodeID)
		if err != nil {
			if _, _, _, serr := p.Stat(ctx, volumeID); serr != nil {
				return "", toStatus(serr) // the volume itself is gone: NotFound
			}
			return "", toStatus(err)
		}
		return r.Mode, nil
	}
	clients := func(ctx context.Context, volumeID string) ([]string, error) {
		_, _, cl, err := p.Lookup(ctx, volumeID)
		if err != nil {
			return nil, toStatus(err)
		}
		id, _ := volumeid.Parse(volumeID)
		u, err := cl.Usage(ctx, id.ImageName())
		return node.SameHost(u.Clients, cl.ClientAddrs()), err
	}
	fence := func(ctx context.Context, volumeID, addr string) error {
		_, _, cl, err := p.Lookup(ctx, volumeID)
		if err != nil {
			return toStatus(err)
		}
		return cl.Blocklist(ctx, addr)
	}
	return node.Lookups{Locate: locate, AttachedMode: attachedMode, Clients: clients, Fence: fence}
}

func checkPath(name, p string) error {
	if p == "" {
		return invalid("%s is required", name)
	}
	if !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return invalid("%s %q must be an absolute, clean path", name, p)
	}
	return nil
}

// NodeStageVolume implements csi.NodeServer.
func (n *Node) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume_id is required")
	}
	if err := checkPath("staging_target_path", req.GetStagingTargetPath()); err != nil {
		return nil, err
	}
	vc := req.GetVolumeCapability()
	if err := validateCapability(vc); err != nil {
		return nil, err
	}
	err := n.Svc.Stage(ctx, node.StageRequest{
		VolumeID: req.GetVolumeId(), StagingPath: req.GetStagingTargetPath(),
		Block: vc.GetBlock() != nil, FsType: vc.GetMount().GetFsType(), MountFlags: vc.GetMount().GetMountFlags(),
	})
	if err != nil {
		return nil, err
	}
	return &csi.NodeStageVolumeResponse{}, nil
}

// NodeUnstageVolume implements csi.NodeServer.
func (n *Node) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume_id is required")
	}
	if err := checkPath("staging_target_path", req.GetStagingTargetPath()); err != nil {
		return nil, err
	}
	if err := n.Svc.Unstage(ctx, req.GetVolumeId(), req.GetStagingTargetPath()); err != nil {
		return nil, err
	}
	return &csi.NodeUnstageVolumeResponse{}, nil
}

// NodePublishVolume implements csi.NodeServer.
func (n *Node) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume_id is required")
	}
	if err := checkPath("target_path", req.GetTargetPath()); err != nil {
		return nil, err
	}
	if err := checkPath("staging_target_path", req.GetStagingTargetPath()); err != nil {
		return nil, err
	}
	vc := req.GetVolumeCapability()
	if err := validateCapability(vc); err != nil {
		return nil, err
	}
	err := n.Svc.Publish(ctx, node.PublishRequest{
		VolumeID: req.GetVolumeId(), StagingPath: req.GetStagingTargetPath(), TargetPath: req.GetTargetPath(),
		ReadOnly: req.GetReadonly(), Block: vc.GetBlock() != nil, MountFlags: vc.GetMount().GetMountFlags(),
		SingleWriter: vc.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
	})
	if err != nil {
		return nil, err
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

// NodeUnpublishVolume implements csi.NodeServer.
func (n *Node) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume_id is required")
	}
	if err := checkPath("target_path", req.GetTargetPath()); err != nil {
		return nil, err
	}
	if err := n.Svc.Unpublish(ctx, req.GetVolumeId(), req.GetTargetPath()); err != nil {
		return nil, err
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// NodeExpandVolume implements csi.NodeServer.
func (n *Node) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume_id is required")
	}
	if req.GetVolumePath() == "" { // any other path that is not the volume's is NotFound
		return nil, invalid("volume_path is required")
	}
	if req.GetCapacityRange().GetRequiredBytes() < 0 {
		return nil, invalid("capacity_range bytes must not be negative")
	}
	if vc := req.GetVolumeCapability(); vc != nil {
		if err := validateCapability(vc); err != nil {
			return nil, err
		}
	}
	size, err := n.Svc.Expand(ctx, req.GetVolumeId(), filepath.Clean(req.GetVolumePath()), req.GetCapacityRange().GetRequiredBytes())
	if err != nil {
		return nil, err
	}
	return &csi.NodeExpandVolumeResponse{CapacityBytes: size}, nil
}

// NodeGetVolumeStats implements csi.NodeServer.
func (n *Node) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume_id is required")
	}
	if req.GetVolumePath() == "" {
		return nil, invalid("volume_path is required")
	}
	usage, err := n.Svc.Stats(ctx, req.GetVolumeId(), req.GetVolumePath())
	if err != nil {
		return nil, err
	}
	return &csi.NodeGetVolumeStatsResponse{Usage: usage}, nil
}

// NodeGetVolumeHealth implements csi.NodeServer (CSI 1.13's replacement
// for volume_condition): INACCESSIBLE when the mapping or a mount is broken.
func (n *Node) NodeGetVolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume_id is required")
	}
	h, err := n.Svc.Health(ctx, req.GetVolumeId(), req.GetVolumePublishPath())
	if err != nil {
		return nil, err
	}
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: h}, nil
}

// NodeGetInfo implements csi.NodeServer.
func (n *Node) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	resp := &csi.NodeGetInfoResponse{NodeId: n.NodeID, MaxVolumesPerNode: n.MaxVolumes}
	if n.Zone != "" {
		resp.AccessibleTopology = &csi.Topology{Segments: map[string]string{scheduler.TopologyKey: n.Zone}}
	}
	return resp, nil
}

// NodeGetCapabilities implements csi.NodeServer.
func (n *Node) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	var caps []*csi.NodeServiceCapability
	for _, t := range []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
		csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
		csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	} {
		caps = append(caps, &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: t}}})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}
