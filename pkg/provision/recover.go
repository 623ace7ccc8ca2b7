package provision

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/basalt-csi/basalt/pkg/metrics"
	"github.com/basalt-csi/basalt/pkg/records"
	"github.com/basalt-csi/basalt/pkg/volumeid"
)

// Recover finds creates that were interrupted (the controller died between
// reserving a name and marking the volume ready) and undoes them: the image
// on the backend, the index entry and the reservation. A CO that still wants
// the volume retries CreateVolume and gets a fresh one. Reservations younger
// than grace are left alone, in case another controller is working on them;
// names whose lock is held in this process are being worked on and skipped.
func (p *Provisioner) Recover(ctx context.Context, grace time.Duration) (undone int, err error) {
	reg, err := p.registry()
	if err != nil {
		return 0, err
	}
	for _, kind := range []records.Kind{records.KindVolume, records.KindSnapshot, records.KindGroup} {
		names, err := reg.Pending(ctx, kind, 1000)
		if err != nil {
			return undone, classify(err, "listing pending creates")
		}
		for _, name := range names {
			lctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
			unlock, lerr := p.Locks.Lock(lctx, lockKey(kind, name))
			cancel()
			if lerr != nil {
				continue
			}
			did, err := p.recoverOne(ctx, reg, kind, name, grace)
			unlock()
			if err != nil {
				p.Log.Error("could not undo an interrupted create; will retry", "name", name, "kind", kind, "error", err)
				continue
			}
			if did {
				undone++
				metrics.Recovered(metrics.RecoveryUndoCreate)
			}
		}
	}
	if err := p.RecoverMoves(ctx, grace); err != nil {
		return undone, err
	}
	// Evicted image-cache images whose last clone has gone since.
	if p.cacheEnabled() {
		for _, bname := range p.Backends.Up() {
			p.removeRetired(ctx, reg, bname)
		}
	}
	// Deleted volumes whose images a crash kept past their last snapshot.
	return undone, p.SweepDeleted(ctx)
}

func (p *Provisioner) recoverOne(ctx context.Context, reg *records.Registry, kind records.Kind, name string, grace time.Duration) (bool, error) {
	res, err := reg.Reservation(ctx, kind, name)
	switch {
	case errors.Is(err, records.ErrNotFound):
		return false, reg.Forget(ctx, kind, name) // crashed between listing and creating
	case err != nil:
		return false, err
	case res.State == records.StateReady:
		return false, reg.Forget(ctx, kind, name) // crashed between ready and unlisting
	case time.Since(res.Updated) < grace:
		return false, nil
	}
	p.Log.Warn("undoing an interrupted create", "name", name, "kind", kind, "uuid", res.UUID, "backend", res.Backend, "since", res.Updated)
	switch kind {
	case records.KindSnapshot:
		err = p.discardSnapshot(ctx, reg, res)
	case records.KindGroup:
		err = p.discardGroup(ctx, reg, res)
	default:
		err = p.discardPartial(ctx, reg, &res)
	}
	if err != nil {
		return false, err
	}
	return true, reg.Release(ctx, kind, name, res.UUID)
}

// discardSnapshot removes what an interrupted CreateSnapshot may have left:
// the RBD snapshot and its index entry.
func (p *Provisioner) discardSnapshot(ctx context.Context, reg *records.Registry, res records.Reservation) error {
	vid, _, cl, err := p.Lookup(ctx, res.Source)
	var pe *Error
	if errors.As(err, &pe) && pe.Kind == NotFound {
		return nil
	}
	if err != nil {
		return err
	}
	sid := volumeid.SnapshotID{Volume: vid, UUID: res.UUID}
	for _, image := range []string{vid.ImageName(), vid.DeletedImageName()} {
		if err := cl.RemoveSnapshot(ctx, image, sid.SnapName()); err != nil {
			return classify(err, "removing the snapshot of an interrupted create")
		}
	}
	return classify(reg.UnindexSnapshot(ctx, sid.String()), "unindexing an interrupted snapshot")
}

// discardGroup removes what an interrupted CreateVolumeGroupSnapshot may
// have left: the RBD group and its snapshot, and the index entries.
func (p *Provisioner) discardGroup(ctx context.Context, reg *records.Registry, res records.Reservation) error {
	vols := strings.Split(res.Source, ",")
	_, _, cl, err := p.Lookup(ctx, vols[0])
	var pe *Error
	if errors.As(err, &pe) && pe.Kind == NotFound {
		return nil
	}
	if err != nil {
		return err
	}
	gid, err := groupIDOn(cl, res.UUID)
	if err != nil {
		return classify(err, "naming an interrupted group snapshot")
	}
	if err := cl.RemoveGroupSnapshot(ctx, gid.GroupName(), volumeid.GroupSnapName); err != nil {
		return classify(err, "removing the group snapshot of an interrupted create")
	}
	for _, v := range vols {
		if id, err := volumeid.Parse(v); err == nil {
			if err := reg.UnindexSnapshot(ctx, volumeid.SnapshotID{Volume: id, UUID: res.UUID}.String()); err != nil {
				return classify(err, "unindexing an interrupted group snapshot")
			}
		}
	}
	return classify(reg.UnindexGroup(ctx, gid.String()), "unindexing an interrupted group snapshot")
}

func lockKey(kind records.Kind, name string) string {
	switch kind {
	case records.KindSnapshot:
		return LockSnapshotName(name)
	case records.KindGroup:
		return LockGroupName(name)
	}
	return LockName(name)
}

// LockGroupName is the in-process lock key of a CreateVolumeGroupSnapshot name.
func LockGroupName(name string) string { return "group snapshot name " + name }

// LockName is the in-process lock key of a CreateVolume name.
func LockName(name string) string { return "name " + name }

// LockSnapshotName is the in-process lock key of a CreateSnapshot name.
func LockSnapshotName(name string) string { return "snapshot name " + name }

// LockVolume is the in-process lock key of a volume ID.
func LockVolume(id string) string { return "volume " + id }

// LockSnapshot is the in-process lock key of a snapshot ID.
func LockSnapshot(id string) string { return "snapshot " + id }
