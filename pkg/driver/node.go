package driver

import (
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/basalt-csi/basalt/pkg/scheduler"
)

// Node implements csi.NodeServer. Staging and publishing arrive with the
// node plugin; until then those calls answer Unimplemented.
type Node struct {
	csi.UnimplementedNodeServer
	NodeID     string
	Zone       string
	MaxVolumes int64
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
	return &csi.NodeGetCapabilitiesResponse{}, nil
}
