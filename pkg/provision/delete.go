package provision

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/basalt-csi/basalt/pkg/backend"
	"github.com/basalt-csi/basalt/pkg/failpoint"
	"github.com/basalt-csi/basalt/pkg/records"
	"github.com/basalt-csi/basalt/pkg/volumeid"
)

// Lookup finds the backend of a volume ID: the cluster and pool the ID
// names, or where a retype moved the volume (records.Move). A malformed ID,
// or one no backend serves, is NotFound; a backend that is down, or a move
// that is still undecided, is Unavailable.
func (p *Provisioner) Lookup(ctx context.Context, volumeID string) (volumeid.ID, string, backend.Cluster, error) {
	id, err := volumeid.Parse(volumeID)
	if err != nil {
		return id, "", nil, errorf(NotFound, err, "volume %q does not exist", volumeID)
	}
	name, cl, err := p.locate(ctx, id, "volume "+volumeID)
	return id, name, cl, err
}

// Stat returns the volume's image information, NotFound if absent.
func (p *Provisioner) Stat(ctx context.Context, volumeID string) (volumeid.ID, string, backend.ImageInfo, error) {
	id, name, cl, err := p.Lookup(ctx, volumeID)
	if err != nil {
		return id, name, backend.ImageInfo{}, err
	}
	info, err := cl.StatImage(ctx, id.ImageName())
	if errors.Is(err, backend.ErrNotFound) {
		return id, name, info, errorf(NotFound, nil, "volume %q does not exist", volumeID)
	}
	return id, name, info, classify(err, "inspecting volume "+volumeID)
}

// Delete is DeleteVolume: idempotent, refuses volumes in use. A volume with
// snapshots (or clones made through them) is deleted too: its image is
// renamed and kept until the last of them goes (reapDeleted).
func (p *Provisioner) Delete(ctx context.Context, volumeID string) error {
	log := p.Log.With("volume", volumeID)
	id, err := volumeid.Parse(volumeID)
	if err != nil {
		log.Info("delete of an unknown volume: nothing to do", "reason", err)
		return nil
	}
	bname, cl, reg, err := p.deleteTarget(ctx, id, "volume "+volumeID)
	if cl == nil || err != nil {
		return err
	}
	atts, err := reg.LoadAttachments(ctx, volumeID, id.UUID)
	if err != nil {
		return classify(err, "reading the attachments of "+volumeID)
	}
	if nodes := atts.Nodes(); len(nodes) > 0 {
		return errorf(FailedPrecondition, nil, "volume %s is still published to node(s) %s; unpublish it first", volumeID, strings.Join(nodes, ", "))
	}
	image := id.ImageName()
	usage, err := cl.Usage(ctx, image)
	switch {
	case errors.Is(err, backend.ErrNotFound):
		// Already gone; finish removing the records below.
	case err != nil:
		return classify(err, "checking whether volume "+volumeID+" is in use")
	case usage.Watchers > 0 && p.Flattening(volumeID):
		return errorf(Unavailable, nil, "volume %s is being flattened in the background (its clone chain was deeper than maxCloneDepth); retry when it ends", volumeID)
	case usage.Watchers > 0:
		return errorf(FailedPrecondition, nil, "volume %s is open by %d client(s): still mapped on a node (unmap it first), or a client that died less than ~30 s ago (its watch then expires); retry", volumeID, usage.Watchers)
	}
	entry, ierr := reg.Volume(ctx, volumeID)
	if ierr != nil && !errors.Is(ierr, records.ErrNotFound) {
		return classify(ierr, "reading the volume index")
	}
	deferred, trashed := false, false
	if err == nil && trashable(usage) {
		// Cinder's deferred deletion (and ceph-csi's): the trash move takes
		// the same few metadata writes whatever the image's size; the data
		// goes in the background (purgeSoon, and the sweeper's passes).
		err, trashed = cl.TrashImage(ctx, image), true
	} else {
		err = cl.RemoveImage(ctx, image)
	}
	switch {
	case errors.Is(err, backend.ErrHasSnapshots):
		// Listed first, so a crash before the rename leaves a trace the
		// sweep resolves (it finds no renamed image and unlists it).
		if err := reg.MarkDeleted(ctx, volumeID, bname); err != nil {
			return classify(err, "listing the volume as deleted")
		}
		if err := cl.RenameImage(ctx, image, id.DeletedImageName()); err != nil {
			return classify(err, "setting aside the image of "+volumeID+" for its snapshots")
		}
		deferred = true
	case errors.Is(err, backend.ErrBusy):
		return errorf(FailedPrecondition, err, "volume %s is in use", volumeID)
	case err != nil:
		return classify(err, "removing the image of "+volumeID)
	}
	if err := failpoint.Hit("delete/after-remove"); err != nil {
		return classify(err, "deleting "+volumeID)
	}
	if ierr == nil {
		if err := reg.Release(ctx, records.KindVolume, entry.Name, id.UUID); err != nil {
			return classify(err, "releasing the name reservation")
		}
		if err := reg.UnindexVolume(ctx, volumeID); err != nil {
			return classify(err, "unindexing the volume")
		}
		p.Backends.Scheduler().Release(bname, entry.SizeBytes)
	}
	if err := failpoint.Hit("delete/after-unindex"); err != nil {
		return classify(err, "deleting "+volumeID)
	}
	if err := reg.DeleteAttachments(ctx, id.UUID); err != nil {
		return classify(err, "removing the (empty) attachment record")
	}
	if err := reg.FlattenDone(ctx, volumeID); err != nil {
		return classify(err, "dropping the volume from the flatten queue")
	}
	if !deferred { // else its image is still found through it, until reaped
		if err := reg.DropMove(ctx, volumeID); err != nil {
			return classify(err, "dropping the move record")
		}
	}
	if deferred {
		log.Info("volume deleted; its image is kept for its snapshots and removed with the last of them", "backend", bname, "image", id.DeletedImageName())
		// A snapshot deleted between the failed removal and the rename
		// may have been its last one.
		p.reapDeleted(ctx, reg, cl, bname, id.DeletedImageName(), volumeID)
		return nil
	}
	if trashed {
		p.purgeSoon(cl, bname, image, usage.ID, usage.Parent)
		log.Info("volume deleted; its image is in the RBD trash, purged in the background", "backend", bname, "image", image)
		return nil
	}
	// Its parent may be a deleted volume's image that only it still needed.
	p.reapDeleted(ctx, reg, cl, bname, usage.Parent, "")
	p.kickSweeper()
	log.Info("volume deleted", "backend", bname, "image", image)
	return nil
}

// trashable tells whether a volume's image may go to the RBD trash: not
// when it has snapshots (they stay restorable: the image is set aside
// instead), nor when it is a clone of another volume or snapshot, which must
// not keep a dependent after this DeleteVolume returned (its source could
// not be deleted, retyped or reaped until the purge). Clones of golden
// images and image-cache entries, copies and blank volumes may.
func trashable(u backend.Usage) bool {
	if u.Snapshots > 0 {
		return false
	}
	basaltParent := strings.HasPrefix(u.ParentImage, volumeid.ImagePrefix) && !strings.HasPrefix(u.ParentImage, volumeid.CachePrefix)
	return !basaltParent
}

// purgeSoon removes a deleted volume's image from the RBD trash in the
// background, under flattenTimeoutSeconds (removing the data takes time
// proportional to the image's size), then looks at its parent, which may be
// a deleted volume's image only it still needed. Whatever this does not
// finish (a crash, a deadline) the sweeper's next pass does (purgeTrash).
func (p *Provisioner) purgeSoon(cl backend.Cluster, bname, image, id, parent string) {
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), p.purgeTimeout())
		defer cancel()
		if err := cl.PurgeTrash(ctx, id, p.purgeTimeout()); err != nil {
			p.Log.Warn("could not purge a deleted volume's image from the trash; the sweeper retries", "backend", bname, "image", image, "trashID", id, "error", err)
			return
		}
		if parent != "" {
			if reg, err := p.registry(); err == nil {
				p.reapDeleted(ctx, reg, cl, bname, parent, "")
			}
		}
	}()
}

// PurgeGrace leaves a freshly trashed image to its delete's own purge
// (tests that check the trash at once set it to 0).
var PurgeGrace = time.Minute

func (p *Provisioner) purgeTimeout() time.Duration {
	return time.Duration(p.Backends.Config().FlattenTimeoutSeconds) * time.Second
}

// purgeTrash removes from backend bname's trash the images of deleted
// volumes that purgeSoon did not (a crash, a deadline, a delete whose
// purge failed), and what an abandoned rbd_remove left there. An image a
// live migration (retype) put in the trash as its source is left alone.
func (p *Provisioner) purgeTrash(ctx context.Context, reg *records.Registry, bname string, cl backend.Cluster) error {
	entries, err := cl.TrashEntries(ctx)
	if err != nil || len(entries) == 0 {
		return err
	}
	// Listed after the trash: a migration writes its record before it
	// moves its source there.
	_, moving, err := moveAliases(ctx, reg)
	if err != nil {
		return err
	}
	movingUUID := map[string]bool{}
	for id := range moving {
		if v, err := volumeid.Parse(id); err == nil {
			movingUUID[v.UUID] = true
		}
	}
	for _, e := range entries {
		uuid, ok := strings.CutPrefix(e.Name, volumeid.ImagePrefix)
		if !ok || movingUUID[uuid] || time.Since(e.Trashed) < PurgeGrace {
			continue // not ours, a migration's source, or its delete's purge may still start
		}
		if err := cl.PurgeTrash(ctx, e.ID, p.purgeTimeout()); err != nil {
			p.Log.Warn("could not purge an image from the trash; next sweep", "backend", bname, "image", e.Name, "error", err)
		}
	}
	return nil
}

// String helps logs.
func (v Volume) String() string {
	return fmt.Sprintf("%s on %s (%d bytes)", v.ID, v.Backend, v.SizeBytes)
}
