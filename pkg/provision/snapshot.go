package provision

import (
	"context"
	"errors"
	"maps"
	"time"

	"github.com/basalt-csi/basalt/pkg/backend"
	"github.com/basalt-csi/basalt/pkg/failpoint"
	"github.com/basalt-csi/basalt/pkg/flow"
	"github.com/basalt-csi/basalt/pkg/records"
	"github.com/basalt-csi/basalt/pkg/volumeid"
)

// SnapshotRequest is a validated CreateSnapshot.
type SnapshotRequest struct {
	Name           string
	SourceVolumeID string
	Params         map[string]string
}

// CreateSnapshot is Cinder's create_snapshot: one RBD snapshot of the
// volume's image, crash-consistent and without copying data. It is
// idempotent by name like Create: the name is reserved durably first.
func (p *Provisioner) CreateSnapshot(ctx context.Context, req SnapshotRequest) (records.SnapshotEntry, error) {
	log := p.Log.With("snapshotName", req.Name, "volume", req.SourceVolumeID)
	reg, err := p.registry()
	if err != nil {
		return records.SnapshotEntry{}, err
	}
	vid, bname, cl, err := p.Lookup(ctx, req.SourceVolumeID)
	if err != nil {
		return records.SnapshotEntry{}, err
	}
	res, created, err := reserve(ctx, reg, records.Reservation{
		Kind: records.KindSnapshot, Name: req.Name, State: records.StateCreating,
		Source: req.SourceVolumeID, Params: req.Params, Backend: bname,
	})
	if err != nil {
		return records.SnapshotEntry{}, classify(err, "reserving the snapshot name")
	}
	if !created {
		if res.Source != req.SourceVolumeID {
			return records.SnapshotEntry{}, errorf(AlreadyExists, nil, "snapshot name %q is already used by a snapshot of volume %s", req.Name, res.Source)
		}
		if !maps.Equal(res.Params, req.Params) && len(res.Params)+len(req.Params) > 0 {
			return records.SnapshotEntry{}, errorf(AlreadyExists, nil, "snapshot name %q is already used by a snapshot with other parameters (%v, requested %v)", req.Name, res.Params, req.Params)
		}
		if res.State == records.StateReady {
			if e, err := reg.Snapshot(ctx, res.VolumeID); err == nil {
				log.Info("snapshot already exists for this name", "snapshot", res.VolumeID)
				return e, nil
			}
		}
		// An interrupted create: taking the snapshot again under the same
		// UUID is idempotent, so carry on with the steps.
		log.Info("resuming an interrupted snapshot", "uuid", res.UUID)
	}

	sid := volumeid.SnapshotID{Volume: vid, UUID: res.UUID}
	entry := records.SnapshotEntry{SnapshotID: sid.String(), Name: req.Name, SourceVolumeID: req.SourceVolumeID, Backend: bname}
	limit := p.Backends.Config().MaxSnapshotsPerImage
	err = flow.Run(ctx, log.With("snapshot", sid.String()),
		flow.Step{
			Name: "snapshot the image",
			Do: func(ctx context.Context) error {
				info, err := cl.CreateSnapshot(ctx, vid.ImageName(), sid.SnapName(), limit)
				switch {
				case errors.Is(err, backend.ErrNotFound):
					return errorf(NotFound, err, "source volume %s does not exist", req.SourceVolumeID)
				case errors.Is(err, backend.ErrSnapshotLimit):
					return errorf(ResourceExhausted, err, "volume %s already has %d snapshots, the most this driver allows (maxSnapshotsPerImage); delete some first", req.SourceVolumeID, limit)
				}
				entry.SizeBytes, entry.Created = info.SizeBytes, time.Now().UTC()
				entry.Depth = depthOf(info.Metadata)
				return err
			},
			Undo: func(ctx context.Context) error { return cl.RemoveSnapshot(ctx, vid.ImageName(), sid.SnapName()) },
		},
		flow.Step{
			Name: "index snapshot",
			Do:   func(ctx context.Context) error { return reg.IndexSnapshot(ctx, entry) },
			Undo: func(ctx context.Context) error { return reg.UnindexSnapshot(ctx, sid.String()) },
		},
		flow.Step{
			Name: "mark ready",
			Do: func(ctx context.Context) error {
				res.State, res.VolumeID, res.SizeBytes = records.StateReady, sid.String(), entry.SizeBytes
				return reg.Save(ctx, &res)
			},
		},
	)
	if err != nil {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), flow.UndoTimeout)
		if rerr := reg.Release(uctx, records.KindSnapshot, req.Name, res.UUID); rerr != nil {
			log.Error("could not release the snapshot name reservation", "error", rerr)
		}
		cancel()
		return records.SnapshotEntry{}, classify(err, "snapshotting volume "+req.SourceVolumeID)
	}
	log.Info("snapshot created", "snapshot", sid.String(), "size", entry.SizeBytes)
	return entry, nil
}

// DeleteSnapshot is idempotent: unknown or malformed IDs succeed. Volumes
// restored from the snapshot keep working (Ceph keeps a snapshot with
// format-2 clones in its snapshot trash until the last clone goes), and a
// deleted volume's image goes with its last snapshot.
func (p *Provisioner) DeleteSnapshot(ctx context.Context, snapshotID string) error {
	log := p.Log.With("snapshot", snapshotID)
	sid, err := volumeid.ParseSnapshot(snapshotID)
	if err != nil {
		log.Info("delete of an unknown snapshot: nothing to do", "reason", err)
		return nil
	}
	bname, cl, reg, err := p.deleteTarget(ctx, sid.Volume, "snapshot "+snapshotID)
	if cl == nil || err != nil {
		return err
	}
	entry, ierr := reg.Snapshot(ctx, snapshotID)
	if ierr != nil && !errors.Is(ierr, records.ErrNotFound) {
		return classify(ierr, "reading the snapshot index")
	}
	if ierr == nil && entry.GroupSnapshotID != "" {
		return errorf(InvalidArgument, nil, "snapshot %s is part of group snapshot %s and cannot be deleted alone; delete the group snapshot", snapshotID, entry.GroupSnapshotID)
	}
	for _, image := range []string{sid.Volume.ImageName(), sid.Volume.DeletedImageName()} {
		if err := cl.RemoveSnapshot(ctx, image, sid.SnapName()); err != nil {
			return classify(err, "removing snapshot "+snapshotID)
		}
	}
	if err := failpoint.Hit("delete-snapshot/after-remove"); err != nil {
		return classify(err, "deleting "+snapshotID)
	}
	// The name is released before the entry that names it goes: a crash in
	// between leaves the entry, and the retry releases again (a no-op).
	if ierr == nil {
		if err := reg.Release(ctx, records.KindSnapshot, entry.Name, sid.UUID); err != nil {
			return classify(err, "releasing the snapshot name reservation")
		}
		if err := failpoint.Hit("delete-snapshot/after-release"); err != nil {
			return classify(err, "deleting "+snapshotID)
		}
		if err := reg.UnindexSnapshot(ctx, snapshotID); err != nil {
			return classify(err, "unindexing the snapshot")
		}
	}
	p.reapDeleted(ctx, reg, cl, bname, sid.Volume.DeletedImageName(), sid.Volume.String())
	p.kickSweeper()
	log.Info("snapshot deleted")
	return nil
}

// Snapshot returns one snapshot's index entry (NotFound if absent).
func (p *Provisioner) Snapshot(ctx context.Context, snapshotID string) (records.SnapshotEntry, error) {
	if _, err := volumeid.ParseSnapshot(snapshotID); err != nil {
		return records.SnapshotEntry{}, errorf(NotFound, err, "snapshot %q does not exist", snapshotID)
	}
	reg, err := p.registry()
	if err != nil {
		return records.SnapshotEntry{}, err
	}
	e, err := reg.Snapshot(ctx, snapshotID)
	if errors.Is(err, records.ErrNotFound) {
		return e, errorf(NotFound, nil, "snapshot %s does not exist", snapshotID)
	}
	return e, classify(err, "reading the snapshot index")
}

// Snapshots pages through the snapshot index, optionally those of one
// volume only (a prefix of the index): each page costs one omap read.
func (p *Provisioner) Snapshots(ctx context.Context, sourceVolumeID, startAfter string, max int) ([]records.SnapshotEntry, string, error) {
	prefix := ""
	if sourceVolumeID != "" {
		id, err := volumeid.Parse(sourceVolumeID)
		if err != nil {
			return nil, "", nil // no snapshot can have a source this driver did not create
		}
		prefix = volumeid.SnapshotPrefixOf(id)
	}
	reg, err := p.registry()
	if err != nil {
		return nil, "", err
	}
	page, next, err := reg.Snapshots(ctx, prefix, startAfter, max)
	return page, next, classify(err, "listing snapshots")
}
