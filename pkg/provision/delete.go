package provision

import (
	"context"
	"errors"
	"fmt"
	"strings"

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
	deferred := false
	err = cl.RemoveImage(ctx, image)
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
	// Its parent may be a deleted volume's image that only it still needed.
	p.reapDeleted(ctx, reg, cl, bname, usage.Parent, "")
	p.kickSweeper()
	log.Info("volume deleted", "backend", bname, "image", image)
	return nil
}

// String helps logs.
func (v Volume) String() string {
	return fmt.Sprintf("%s on %s (%d bytes)", v.ID, v.Backend, v.SizeBytes)
}
