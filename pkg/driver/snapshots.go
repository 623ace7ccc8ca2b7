package driver

import (
	"context"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/basalt-csi/basalt/pkg/provision"
	"github.com/basalt-csi/basalt/pkg/records"
	"github.com/basalt-csi/basalt/pkg/volumeid"
)

// contentSource validates CreateVolume's volume_content_source.
func contentSource(cs *csi.VolumeContentSource) (*provision.ContentSource, error) {
	switch {
	case cs == nil:
		return nil, nil
	case cs.GetSnapshot() != nil:
		if cs.GetSnapshot().GetSnapshotId() == "" {
			return nil, invalid("volume_content_source.snapshot.snapshot_id is required")
		}
		return &provision.ContentSource{SnapshotID: cs.GetSnapshot().GetSnapshotId()}, nil
	case cs.GetVolume() != nil:
		if cs.GetVolume().GetVolumeId() == "" {
			return nil, invalid("volume_content_source.volume.volume_id is required")
		}
		return &provision.ContentSource{VolumeID: cs.GetVolume().GetVolumeId()}, nil
	}
	return nil, invalid("volume_content_source must name a snapshot or a volume")
}

// CreateSnapshot implements csi.ControllerServer.
func (c *Controller) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if req.GetName() == "" {
		return nil, invalid("name is required")
	}
	if len(req.GetName()) > 128 {
		return nil, invalid("name is longer than 128 bytes")
	}
	if req.GetSourceVolumeId() == "" {
		return nil, invalid("source_volume_id is required")
	}
	unlock, err := c.lock(ctx, provision.LockSnapshotName(req.GetName()))
	if err != nil {
		return nil, err
	}
	defer unlock()
	// The source volume's lock orders the snapshot against its deletion.
	vunlock, err := c.lock(ctx, provision.LockVolume(req.GetSourceVolumeId()))
	if err != nil {
		return nil, err
	}
	defer vunlock()
	e, err := c.Prov.CreateSnapshot(ctx, provision.SnapshotRequest{
		Name: req.GetName(), SourceVolumeID: req.GetSourceVolumeId(), Params: identityOf(req.GetParameters()),
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.CreateSnapshotResponse{Snapshot: csiSnapshot(e)}, nil
}

// identityOf keeps the parameters that define a snapshot (a retry with
// others is AlreadyExists): the VolumeSnapshotClass's own. None changes how
// the snapshot is taken; they are recorded. The csi.storage.k8s.io keys the
// sidecar adds name the VolumeSnapshot and are left out.
func identityOf(params map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range params {
		if !strings.HasPrefix(k, paramK8sPrefix) {
			out[k] = v
		}
	}
	return out
}

func csiSnapshot(e records.SnapshotEntry) *csi.Snapshot {
	return &csi.Snapshot{
		SnapshotId:      e.SnapshotID,
		SourceVolumeId:  e.SourceVolumeID,
		SizeBytes:       int64(e.SizeBytes),
		CreationTime:    timestamppb.New(e.Created),
		ReadyToUse:      true, // an RBD snapshot is complete when it exists
		GroupSnapshotId: e.GroupSnapshotID,
	}
}

// DeleteSnapshot implements csi.ControllerServer.
func (c *Controller) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, invalid("snapshot_id is required")
	}
	unlock, err := c.lock(ctx, provision.LockSnapshot(req.GetSnapshotId()))
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := c.Prov.DeleteSnapshot(ctx, req.GetSnapshotId()); err != nil {
		return nil, toStatus(err)
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

// ListSnapshots implements csi.ControllerServer. The token is the last
// snapshot ID of the previous page; a page costs one omap read.
func (c *Controller) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	if req.GetMaxEntries() < 0 {
		return nil, invalid("max_entries must not be negative")
	}
	if tok := req.GetStartingToken(); tok != "" {
		if _, err := volumeid.ParseSnapshot(tok); err != nil {
			return nil, status.Errorf(codes.Aborted, "starting_token %q was not returned by this driver", tok)
		}
	}
	if id := req.GetSnapshotId(); id != "" {
		e, err := c.Prov.Snapshot(ctx, id)
		if err != nil {
			if status.Code(toStatus(err)) == codes.NotFound {
				return &csi.ListSnapshotsResponse{}, nil
			}
			return nil, toStatus(err)
		}
		if src := req.GetSourceVolumeId(); src != "" && src != e.SourceVolumeID {
			return &csi.ListSnapshotsResponse{}, nil
		}
		return &csi.ListSnapshotsResponse{Entries: []*csi.ListSnapshotsResponse_Entry{{Snapshot: csiSnapshot(e)}}}, nil
	}
	max := int(req.GetMaxEntries())
	if max == 0 || max > 1000 {
		max = 1000
	}
	page, next, err := c.Prov.Snapshots(ctx, req.GetSourceVolumeId(), req.GetStartingToken(), max)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &csi.ListSnapshotsResponse{NextToken: next}
	for _, e := range page {
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: csiSnapshot(e)})
	}
	return resp, nil
}

// GetSnapshot implements csi.ControllerServer.
func (c *Controller) GetSnapshot(ctx context.Context, req *csi.GetSnapshotRequest) (*csi.GetSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, invalid("snapshot_id is required")
	}
	e, err := c.Prov.Snapshot(ctx, req.GetSnapshotId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.GetSnapshotResponse{Snapshot: csiSnapshot(e)}, nil
}
