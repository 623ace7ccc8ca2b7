package driver

import (
	"context"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/basalt-csi/basalt/pkg/provision"
)

// ControllerPublishVolume implements csi.ControllerServer: a durable
// attachment record, like Cinder's os-attach.
func (c *Controller) ControllerPublishVolume(ctx context.Context, req *csi.ControllerPublishVolumeRequest) (*csi.ControllerPublishVolumeResponse, error) {
	switch {
	case req.GetVolumeId() == "":
		return nil, invalid("volume_id is required")
	case req.GetNodeId() == "":
		return nil, invalid("node_id is required")
	}
	if err := validateCapability(req.GetVolumeCapability()); err != nil {
		return nil, err
	}
	unlock, err := c.lock(ctx, provision.LockVolume(req.GetVolumeId()))
	if err != nil {
		return nil, err
	}
	defer unlock()
	// Serialises publishes to one node so its attach limit holds in this process.
	unlockNode, err := c.lock(ctx, "node "+req.GetNodeId())
	if err != nil {
		return nil, err
	}
	defer unlockNode()
	pc, err := c.Prov.Publish(ctx, provision.PublishRequest{
		VolumeID:   req.GetVolumeId(),
		NodeID:     req.GetNodeId(),
		ReadOnly:   req.GetReadonly(),
		AccessMode: req.GetVolumeCapability().GetAccessMode().GetMode(),
		Block:      req.GetVolumeCapability().GetBlock() != nil,
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.ControllerPublishVolumeResponse{PublishContext: pc}, nil
}

// ControllerUnpublishVolume implements csi.ControllerServer. Detaching what
// is already detached succeeds.
func (c *Controller) ControllerUnpublishVolume(ctx context.Context, req *csi.ControllerUnpublishVolumeRequest) (*csi.ControllerUnpublishVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume_id is required")
	}
	unlock, err := c.lock(ctx, provision.LockVolume(req.GetVolumeId()))
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := c.Prov.Unpublish(ctx, req.GetVolumeId(), req.GetNodeId()); err != nil {
		return nil, toStatus(err)
	}
	return &csi.ControllerUnpublishVolumeResponse{}, nil
}
