package provision

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/basalt-csi/basalt/pkg/backend"
	"github.com/basalt-csi/basalt/pkg/metrics"
	"github.com/basalt-csi/basalt/pkg/records"
	"github.com/basalt-csi/basalt/pkg/volumeid"
)

// Deferred work: the images of deleted volumes that snapshots still need,
// and the background flattening of clone chains that grew too deep. Both are
// listed durably in the registry, so a crash loses none of it.

// reapDeleted removes the image of a deleted volume once nothing needs it
// (no snapshot left, none in Ceph's snapshot trash waiting for a clone), then
// goes up its clone chain: removing it may free its deleted parent. Failures
// are logged and left to the periodic sweep. volumeID is the ID of image's
// volume if known, else "": it is then derived from the pool, which misses
// a volume a retype moved here; the sweep, which knows every listed ID,
// unlists that one.
func (p *Provisioner) reapDeleted(ctx context.Context, reg *records.Registry, cl backend.Cluster, bname, image, volumeID string) {
	fsid, err := volumeid.NormalizeFSID(cl.ClusterID())
	if err != nil {
		return
	}
	for ; strings.HasPrefix(image, volumeid.DeletedPrefix); volumeID = "" {
		vid := volumeid.ID{FSID: fsid, PoolID: cl.PoolID(), UUID: strings.TrimPrefix(image, volumeid.DeletedPrefix)}.String()
		if volumeID != "" {
			vid = volumeID
		}
		usage, err := cl.Usage(ctx, image)
		if err == nil {
			err = cl.RemoveImage(ctx, image)
		}
		removed := err == nil
		switch {
		case errors.Is(err, backend.ErrHasSnapshots), errors.Is(err, backend.ErrBusy):
			// Debug: the sweeper passes by every 30 s while snapshots live.
			p.Log.Debug("image of a deleted volume kept: a snapshot or clone still needs it", "image", image, "backend", bname, "reason", err)
			return
		case err != nil && !errors.Is(err, backend.ErrNotFound):
			p.Log.Warn("could not remove the image of a deleted volume; the sweep retries", "image", image, "backend", bname, "error", err)
			return
		}
		listed, err := reg.IsDeleted(ctx, vid)
		if err != nil {
			p.Log.Warn("could not read the deleted list; the sweep retries", "volume", vid, "error", err)
			return
		}
		if listed { // else the volume is alive (or long gone): nothing to drop
			// The move record first: the listing is what brings the sweep back.
			if err := reg.DropMove(ctx, vid); err != nil {
				p.Log.Warn("could not drop the move record of a removed deleted volume; the sweep retries", "volume", vid, "error", err)
				return
			}
			if err := reg.UnmarkDeleted(ctx, vid); err != nil {
				p.Log.Warn("could not unlist a removed deleted volume; the sweep retries", "volume", vid, "error", err)
				return
			}
		}
		if removed {
			p.Log.Info("removed the image of a deleted volume: its last snapshot and clone are gone", "image", image, "backend", bname)
		}
		image = usage.Parent
	}
}

// SweepDeleted retries reapDeleted for every deleted volume still listed:
// the net under crashes between a removal and its follow-up, and under
// concurrent deletes (a clone's removal detaches it from its parent while
// another request already tried the parent).
func (p *Provisioner) SweepDeleted(ctx context.Context) error {
	reg, err := p.registry()
	if err != nil {
		return err
	}
	kvs, err := reg.Deleted(ctx, 1000)
	if err != nil {
		return classify(err, "listing deleted volumes")
	}
	for _, kv := range kvs {
		id, err := volumeid.Parse(kv.Key)
		if err != nil {
			continue
		}
		bname, cl, err := p.locate(ctx, id, "deleted volume "+kv.Key)
		if err != nil {
			continue // down: next sweep
		}
		p.reapDeleted(ctx, reg, cl, bname, id.DeletedImageName(), kv.Key)
	}
	for _, bname := range p.Backends.Up() {
		if cl, _, err := p.Backends.Get(bname); err == nil {
			if err := p.purgeTrash(ctx, reg, bname, cl); err != nil {
				p.Log.Warn("could not look at the trash; next sweep", "backend", bname, "error", err)
			}
		}
	}
	return nil
}

// flattener runs queued flattens with bounded concurrency (Cinder's
// rbd_concurrent_flatten_operations).
type flattener struct {
	once    sync.Once
	kick    chan struct{}
	sweep   chan struct{} // wakes RunSweeper
	mu      sync.Mutex
	running map[string]bool // volume IDs being flattened by this process
}

func (f *flattener) init() {
	f.once.Do(func() {
		f.kick = make(chan struct{}, 1)
		f.sweep = make(chan struct{}, 1)
		f.running = map[string]bool{}
	})
}

// kickFlattener wakes the flattener for newly queued work.
func (p *Provisioner) kickFlattener() {
	p.flat.init()
	select {
	case p.flat.kick <- struct{}{}:
	default:
	}
}

// kickSweeper asks RunSweeper for a pass soon (deletes call it).
func (p *Provisioner) kickSweeper() {
	p.flat.init()
	select {
	case p.flat.sweep <- struct{}{}:
	default:
	}
}

// RunSweeper removes the images of deleted volumes that nothing needs any
// more: a second after deletes ask for it (so concurrent deletes have
// settled), and every interval.
func (p *Provisioner) RunSweeper(ctx context.Context, interval time.Duration) {
	p.flat.init()
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.flat.sweep:
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		case <-time.After(interval):
		}
		if err := p.SweepDeleted(ctx); err != nil {
			p.Log.Warn("sweep of deleted volumes postponed", "error", err)
		}
	}
}

// Flattening reports whether this process is flattening volumeID.
func (p *Provisioner) Flattening(volumeID string) bool {
	p.flat.init()
	p.flat.mu.Lock()
	defer p.flat.mu.Unlock()
	return p.flat.running[volumeID]
}

// RunFlattener works through the flatten queue until ctx ends: at start,
// when a create queues work, and every interval.
func (p *Provisioner) RunFlattener(ctx context.Context, interval time.Duration) {
	p.flat.init()
	slots := make(chan struct{}, max(1, p.Backends.Config().FlattenConcurrency))
	for {
		if reg, err := p.registry(); err == nil {
			if queue, err := reg.FlattenQueue(ctx, 1000); err == nil {
				for _, kv := range queue {
					if !p.claim(kv.Key) {
						continue
					}
					select {
					case slots <- struct{}{}:
					case <-ctx.Done():
						return
					}
					go func(volumeID string) {
						defer func() { <-slots }()
						p.flattenOne(ctx, reg, volumeID)
					}(kv.Key)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-p.flat.kick:
		case <-time.After(interval):
		}
	}
}

func (p *Provisioner) claim(volumeID string) bool {
	p.flat.mu.Lock()
	defer p.flat.mu.Unlock()
	if p.flat.running[volumeID] {
		return false
	}
	p.flat.running[volumeID] = true
	return true
}

func (p *Provisioner) flattenOne(ctx context.Context, reg *records.Registry, volumeID string) {
	defer func() {
		p.flat.mu.Lock()
		delete(p.flat.running, volumeID)
		p.flat.mu.Unlock()
	}()
	log := p.Log.With("volume", volumeID)
	id, bname, cl, err := p.Lookup(ctx, volumeID)
	var pe *Error
	if errors.As(err, &pe) && pe.Kind == NotFound {
		_ = reg.FlattenDone(ctx, volumeID)
		return
	}
	if err != nil {
		return // backend down: a later pass retries
	}
	usage, err := cl.Usage(ctx, id.ImageName())
	if errors.Is(err, backend.ErrNotFound) {
		_ = reg.FlattenDone(ctx, volumeID) // deleted meanwhile
		return
	}
	if err != nil {
		log.Warn("flatten postponed", "error", err)
		return
	}
	start := time.Now()
	log.Info("flattening a volume whose clone chain is too deep", "parent", usage.Parent)
	timeout := time.Duration(p.Backends.Config().FlattenTimeoutSeconds) * time.Second
	err = cl.Flatten(ctx, id.ImageName(), timeout)
	metrics.Flattened(time.Since(start), err)
	if err != nil {
		if !errors.Is(err, backend.ErrNotFound) {
			log.Warn("flatten failed; it is retried", "error", err)
			return
		}
	}
	// A flat volume's clones are depth 1: record it (best effort; a stale
	// depth only makes a later clone flatten sooner).
	if info, err := cl.StatImage(ctx, id.ImageName()); err == nil {
		if err := cl.Finish(ctx, id.ImageName(), info.SizeBytes, map[string]string{MetaDepth: "0"}); err != nil {
			log.Warn("could not record the flattened depth", "error", err)
		}
	}
	if err := reg.FlattenDone(ctx, volumeID); err != nil {
		log.Warn("flattened, but could not dequeue; it is retried (a no-op)", "error", err)
		return
	}
	log.Info("volume flattened", "took", time.Since(start).Round(time.Millisecond))
	p.reapDeleted(ctx, reg, cl, bname, usage.Parent, "")
}
