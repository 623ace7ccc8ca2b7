package driver

import (
	"context"
	"sort"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/basalt-csi/basalt/pkg/provision"
)

// GroupController implements csi.GroupControllerServer: volume group
// snapshots, taken as RBD group snapshots (crash-consistent across the
// volumes). It shares the controller's provisioner and locks.
type GroupController struct {
	csi.UnimplementedGroupControllerServer
	c *Controller
}

// Group returns the controller's group snapshot service.
func (c *Controller) Group() *GroupController { return &GroupController{c: c} }

// GroupControllerGetCapabilities implements csi.GroupControllerServer.
func (g *GroupController) GroupControllerGetCapabilities(context.Context, *csi.GroupControllerGetCapabilitiesRequest) (*csi.GroupControllerGetCapabilitiesResponse, error) {
	return &csi.GroupControllerGetCapabilitiesResponse{Capabilities: []*csi.GroupControllerServiceCapability{{
		Type: &csi.GroupControllerServiceCapability_Rpc{Rpc: &csi.GroupControllerServiceCapability_RPC{
			Type: csi.GroupControllerServiceCapability_RPC_CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT,
		}},
	}}}, nil
}

// CreateVolumeGroupSnapshot implements csi.GroupControllerServer.
func (g *GroupController) CreateVolumeGroupSnapshot(ctx context.Context, req *csi.CreateVolumeGroupSnapshotRequest) (*csi.CreateVolumeGroupSnapshotResponse, error) {
	if req.GetName() == "" {
		return nil, invalid("name is required")
	}
	if len(req.GetName()) > 128 {
		return nil, invalid("name is longer than 128 bytes")
	}
	if len(req.GetSourceVolumeIds()) == 0 {
		return nil, invalid("source_volume_ids are required")
	}
	for _, v := range req.GetSourceVolumeIds() {
		if v == "" {
			return nil, invalid("source_volume_ids must not hold an empty ID")
		}
	}
	unlock, err := g.c.lock(ctx, provision.LockGroupName(req.GetName()))
	if err != nil {
		return nil, err
	}
	defer unlock()
	// The volumes' locks order the snapshot against their deletion; taken
	// in ID order so two groups over the same volumes cannot deadlock.
	vols := append([]string(nil), req.GetSourceVolumeIds()...)
	sort.Strings(vols)
	for i, v := range vols {
		if i > 0 && v == vols[i-1] {
			continue
		}
		vunlock, err := g.c.lock(ctx, provision.LockVolume(v))
		if err != nil {
			return nil, err
		}
		defer vunlock()
	}
	grp, err := g.c.Prov.CreateGroupSnapshot(ctx, provision.GroupRequest{
		Name: req.GetName(), VolumeIDs: req.GetSourceVolumeIds(), Params: identityOf(req.GetParameters()),
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.CreateVolumeGroupSnapshotResponse{GroupSnapshot: csiGroup(grp)}, nil
}

func csiGroup(g provision.Group) *csi.VolumeGroupSnapshot {
	out := &csi.VolumeGroupSnapshot{
		GroupSnapshotId: g.Entry.GroupSnapshotID,
		CreationTime:    timestamppb.New(g.Entry.Created),
		ReadyToUse:      true,
	}
	for _, m := range g.Members {
		out.Snapshots = append(out.Snapshots, csiSnapshot(m))
	}
	return out
}

// DeleteVolumeGroupSnapshot implements csi.GroupControllerServer.
func (g *GroupController) DeleteVolumeGroupSnapshot(ctx context.Context, req *csi.DeleteVolumeGroupSnapshotRequest) (*csi.DeleteVolumeGroupSnapshotResponse, error) {
	if req.GetGroupSnapshotId() == "" {
		return nil, invalid("group_snapshot_id is required")
	}
	unlock, err := g.c.lock(ctx, provision.LockSnapshot(req.GetGroupSnapshotId()))
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := g.c.Prov.DeleteGroupSnapshot(ctx, req.GetGroupSnapshotId(), req.GetSnapshotIds()); err != nil {
		return nil, toStatus(err)
	}
	return &csi.DeleteVolumeGroupSnapshotResponse{}, nil
}

// GetVolumeGroupSnapshot implements csi.GroupControllerServer.
func (g *GroupController) GetVolumeGroupSnapshot(ctx context.Context, req *csi.GetVolumeGroupSnapshotRequest) (*csi.GetVolumeGroupSnapshotResponse, error) {
	if req.GetGroupSnapshotId() == "" {
		return nil, invalid("group_snapshot_id is required")
	}
	grp, err := g.c.Prov.GroupSnapshot(ctx, req.GetGroupSnapshotId(), req.GetSnapshotIds())
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.GetVolumeGroupSnapshotResponse{GroupSnapshot: csiGroup(grp)}, nil
}
