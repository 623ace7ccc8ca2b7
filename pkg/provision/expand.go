package provision

import (
	"context"
	"errors"
	"strconv"

	"github.com/basalt-csi/basalt/pkg/failpoint"
	"github.com/basalt-csi/basalt/pkg/records"
	"github.com/basalt-csi/basalt/pkg/scheduler"
)

// MetaExpanded records on an image the size ControllerExpandVolume last
// grew it to, for operators (`rbd image-meta list`). The node needs no such
// hint: it checks every mount volume's filesystem against its device at
// stage.
const MetaExpanded = "basalt.expanded"

// Expand grows a volume's image to at least required bytes (at most limit,
// 0: none), Cinder's extend_volume, and returns its size. A request at or
// below the current size succeeds with the current size (Kubernetes sends
// smaller sizes to recover from a failed expansion; RBD images never
// shrink). The growth must fit the backend's thin-provisioning room, as a
// new volume of that size would. The caller holds the volume's lock.
//
// Durable order: the image grows first (with its "expanded" mark), then the
// index entry takes the new size. A crash in between leaves the index
// short; the CO's retry finds the image already grown and corrects it.
func (p *Provisioner) Expand(ctx context.Context, volumeID string, required, limit uint64) (uint64, error) {
	id, bname, info, err := p.Stat(ctx, volumeID)
	if err != nil {
		return 0, err
	}
	cl, _, err := p.Backends.Get(bname) // Stat found the backend (and read the move record)
	if err != nil {
		return 0, errorf(Unavailable, err, "the backend of volume %s is down", volumeID)
	}
	reg, err := p.registry()
	if err != nil {
		return 0, err
	}
	// Exactly what was asked: CSI answers the new size, and a CO (or
	// csi-sanity) may compare it with its request. RBD sizes are in bytes.
	size := required
	if limit != 0 && size > limit {
		return 0, errorf(OutOfRange, nil, "required_bytes %d is above limit_bytes %d", required, limit)
	}
	if size <= info.SizeBytes {
		// Done already (or asked for less): make sure the index agrees.
		return info.SizeBytes, p.recordSize(ctx, reg, volumeID, info.SizeBytes)
	}
	delta := size - info.SizeBytes
	sched := p.Backends.Scheduler()
	if why := sched.Grow(bname, delta); why != "" {
		if why == scheduler.ReasonDown {
			return 0, errorf(Unavailable, nil, "cannot grow volume %s: backend %s is down; retry", volumeID, bname)
		}
		return 0, errorf(ResourceExhausted, nil, "cannot grow volume %s by %d bytes on backend %s: %s", volumeID, delta, bname, why)
	}
	if err := cl.Finish(ctx, id.ImageName(), size, map[string]string{MetaExpanded: strconv.FormatUint(size, 10)}); err != nil {
		sched.Abandon(bname, delta)
		return 0, classify(err, "growing the image of "+volumeID)
	}
	if err := failpoint.Hit("expand/after-resize"); err != nil {
		sched.Abandon(bname, delta)
		return 0, classify(err, "growing "+volumeID)
	}
	if err := p.recordSize(ctx, reg, volumeID, size); err != nil {
		sched.Abandon(bname, delta) // the retry charges it again
		return 0, err
	}
	sched.Settle(bname, delta)
	p.Log.Info("volume expanded", "volume", volumeID, "backend", bname, "from", info.SizeBytes, "to", size)
	return size, nil
}

// recordSize makes the volume's index entry say size (capacity accounting
// sums the index).
func (p *Provisioner) recordSize(ctx context.Context, reg *records.Registry, volumeID string, size uint64) error {
	e, err := reg.Volume(ctx, volumeID)
	if errors.Is(err, records.ErrNotFound) {
		return nil // not indexed (yet, or any more): nothing to correct
	}
	if err != nil {
		return classify(err, "reading the index entry of "+volumeID)
	}
	if e.SizeBytes == size {
		return nil
	}
	e.SizeBytes = size
	return classify(reg.IndexVolume(ctx, e), "recording the new size of "+volumeID)
}
