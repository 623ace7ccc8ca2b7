package provision

// The image-volume cache (Cinder's image_volume_cache): a create from a
// golden image held in another cluster copies the image once into the
// chosen backend's cluster, as an image with one snapshot ("an entry"), and
// every later create there clones that snapshot. README, "Image-volume
// cache", has the user's view; this file is the mechanism:
//
//   - an entry is keyed by the golden snapshot's spec and fingerprint (its
//     fsid, ID, creation time and size), read fresh at every such create, so
//     a snapshot replaced under the same name is never served stale;
//   - a fill holds a durable lock object in the registry, renewed while it
//     runs; concurrent first creates (in this process or another) wait for
//     it and then clone; a lock left by a dead filler is taken over (at
//     once when it was this controller's previous incarnation, else after
//     CacheFillGrace without renewal) and its partial image removed;
//   - a fill runs in the background under its own deadline, so a create
//     whose RPC deadline ends first gets DeadlineExceeded and its retry
//     finds the entry ready;
//   - after a fill, the backend's entries beyond maxCount/maxSizeGiB are
//     evicted least recently used first (stale ones first of all); an
//     evicted image that clones still need is retired, removed by a later
//     pass once its last clone is gone (clone v2: its snapshot waits in the
//     trash meanwhile).

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"sort"
	"strings"
	"time"

	"github.com/basalt-csi/basalt/pkg/backend"
	"github.com/basalt-csi/basalt/pkg/flow"
	"github.com/basalt-csi/basalt/pkg/metrics"
	"github.com/basalt-csi/basalt/pkg/records"
	"github.com/basalt-csi/basalt/pkg/volumeid"
)

// CacheSnap is the snapshot of a cache image that volumes clone.
const CacheSnap = "cache"

var (
	// CacheFillGrace: a fill lock not renewed for this long belongs to a
	// dead filler and is taken over. The holder renews it every quarter.
	CacheFillGrace = 2 * time.Minute
	// CacheFillTimeout bounds one fill (the copy of one golden image).
	CacheFillTimeout = time.Hour
	// cachePoll is how often a create waiting for another process's fill
	// looks again.
	cachePoll = 500 * time.Millisecond
)

// errNoCacheEntry: no entry in the cluster and the backend's cache is off.
var errNoCacheEntry = errors.New("no image-cache entry")

// cacheKey names an entry: the golden image and the snapshot copied.
func cacheKey(spec backend.ImageSpec, fingerprint string) string {
	sum := sha256.Sum256([]byte(spec.String() + "\x00" + fingerprint))
	return hex.EncodeToString(sum[:10])
}

// fillJob is one entry to fill: spec's snapshot (info, in cluster src)
// copied into backend bname.
type fillJob struct {
	bname string
	cl    backend.Cluster
	pool  string
	spec  backend.ImageSpec
	src   backend.Cluster
	info  backend.SnapshotInfo
	key   string
}

func (j fillJob) fsid() string { return j.cl.ClusterID() }

// fill is one fill running in this process; done closes when it ends.
type fill struct {
	done  chan struct{}
	entry records.CacheEntry
	err   error
}

// cacheEnabled reports whether any backend has its image cache on.
func (p *Provisioner) cacheEnabled() bool {
	for _, b := range p.Backends.Config().Backends {
		if b.ImageCache.Enabled {
			return true
		}
	}
	return false
}

// addCachedClusters marks the clusters holding a valid entry of the golden
// image o as holding it: the scheduler then prefers their backends as it
// prefers the image's own cluster.
func (p *Provisioner) addCachedClusters(ctx context.Context, reg *records.Registry, o *origin) {
	if !p.cacheEnabled() {
		return
	}
	entries, err := reg.CacheEntries(ctx)
	if err != nil {
		// Placement is still correct without it, only less well informed.
		p.Log.Warn("could not read the image-cache index; placing without it", "error", err)
		return
	}
	keys := map[string]bool{}
	for _, fp := range o.fingerprints {
		keys[cacheKey(*o.spec, fp)] = true
	}
	for _, e := range entries {
		if keys[e.Key] {
			o.clusters[e.FSID] = true
		}
	}
}

// cloneCached makes dst a clone of the cache entry of golden image spec in
// cl's cluster, filling the entry first if needed. errNoCacheEntry when
// there is none and backend bname's cache is off: the caller copies.
func (p *Provisioner) cloneCached(ctx context.Context, reg *records.Registry, bname string, cl backend.Cluster,
	spec backend.ImageSpec, src backend.Cluster, dst string, meta map[string]string) error {
	for attempt := 0; ; attempt++ {
		e, filled, err := p.cacheEntry(ctx, reg, bname, cl, spec, src)
		if err != nil {
			if errors.Is(err, errNoCacheEntry) {
				metrics.CacheLookup(bname, metrics.CacheOff)
			}
			return err
		}
		err = cl.Clone(ctx, backend.ImageSpec{Pool: e.Pool, Image: e.Image, Snap: CacheSnap}, dst)
		if errors.Is(err, backend.ErrNotFound) && attempt == 0 {
			// Evicted between the lookup and the clone: drop the entry (in
			// case a stale hit count wrote it back) and look again.
			p.Log.Info("image-cache entry gone before its clone; looking again", "image", e.Image)
			if err := reg.DropCacheEntry(ctx, e); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		meta[MetaCache] = e.Pool + "/" + e.Image
		if filled {
			metrics.CacheLookup(bname, metrics.CacheMiss)
			return nil
		}
		metrics.CacheLookup(bname, metrics.CacheHit)
		p.noteCacheHit(reg, e)
		return nil
	}
}

// cacheEntry returns the ready entry of spec in cl's cluster, filling one
// into backend bname first if there is none (filled=true).
func (p *Provisioner) cacheEntry(ctx context.Context, reg *records.Registry, bname string, cl backend.Cluster,
	spec backend.ImageSpec, src backend.Cluster) (e records.CacheEntry, filled bool, err error) {
	// Fresh, not from the lookup cache: a golden snapshot replaced under
	// the same name a moment ago must not be served from the old copy.
	info, err := src.SnapshotInfo(ctx, spec)
	if err != nil {
		return e, false, classify(err, "inspecting golden image "+spec.String())
	}
	key := cacheKey(spec, info.Fingerprint(src.ClusterID()))
	e, err = reg.CacheEntry(ctx, cl.ClusterID(), key)
	if err == nil {
		return e, false, nil
	}
	if !errors.Is(err, records.ErrNotFound) {
		return e, false, classify(err, "reading the image-cache index")
	}
	_, bcfg, err := p.Backends.Get(bname)
	if err != nil {
		return e, false, err
	}
	if !bcfg.ImageCache.Enabled {
		return e, false, errNoCacheEntry
	}
	job := fillJob{bname: bname, cl: cl, pool: bcfg.Pool, spec: spec, src: src, info: info, key: key}
	e, err = p.awaitFill(ctx, reg, job)
	return e, true, err
}

// awaitFill starts the fill of job unless one runs here already, and waits
// for it until ctx ends.
func (p *Provisioner) awaitFill(ctx context.Context, reg *records.Registry, job fillJob) (records.CacheEntry, error) {
	id := job.fsid() + "/" + job.key
	p.fillsMu.Lock()
	if p.fills == nil {
		p.fills = map[string]*fill{}
	}
	f := p.fills[id]
	if f == nil {
		f = &fill{done: make(chan struct{})}
		p.fills[id] = f
		go func() {
			defer func() {
				p.fillsMu.Lock()
				delete(p.fills, id)
				p.fillsMu.Unlock()
				close(f.done)
			}()
			f.entry, f.err = p.runFill(reg, job)
		}()
	}
	p.fillsMu.Unlock()
	select {
	case <-f.done:
		return f.entry, f.err
	case <-ctx.Done():
		return records.CacheEntry{}, errorf(DeadlineExceeded, ctx.Err(),
			"golden image %s is still being copied into the image cache of cluster %s; the retry clones it once it is ready", job.spec, job.fsid())
	}
}

// runFill takes the durable fill lock (or waits while another live filler
// holds it) and fills the entry, under CacheFillTimeout.
func (p *Provisioner) runFill(reg *records.Registry, job fillJob) (records.CacheEntry, error) {
	ctx, cancel := context.WithTimeout(context.Background(), CacheFillTimeout)
	defer cancel()
	nonce := volumeid.NewUUID()[:8]
	owner := p.Instance + "/" + nonce
	// A lock left by this controller's previous incarnation is dead (it was
	// fenced at start-up); one of this process is never seen here, since a
	// process runs one fill per entry.
	previousIncarnation := func(o string) bool {
		inst, _, _ := strings.Cut(o, "/")
		return p.Instance != "" && inst == p.Instance && o != owner
	}
	lock := records.CacheFill{FSID: job.fsid(), Key: job.key, Backend: job.bname,
		Image: volumeid.CachePrefix + job.key + "-" + nonce, Owner: owner}
	for logged := false; ; {
		if e, err := reg.CacheEntry(ctx, job.fsid(), job.key); err == nil {
			return e, nil // filled by another process
		}
		held, prev, err := reg.TakeCacheFill(ctx, lock, CacheFillGrace, previousIncarnation)
		if errors.Is(err, records.ErrExists) {
			if !logged && prev != nil {
				p.Log.Info("waiting for another controller's image-cache fill", "image", job.spec.String(), "fsid", job.fsid(), "owner", prev.Owner)
				logged = true
			}
			select {
			case <-ctx.Done():
				return records.CacheEntry{}, classify(ctx.Err(), "waiting for the image-cache fill of "+job.spec.String())
			case <-time.After(cachePoll):
			}
			continue
		}
		if err != nil {
			return records.CacheEntry{}, classify(err, "taking the image-cache fill lock")
		}
		start := time.Now()
		e, err := p.fillEntry(ctx, reg, job, held, prev)
		metrics.CacheFilled(job.bname, time.Since(start), err)
		if err != nil {
			return e, err
		}
		p.Log.Info("image-cache entry filled", "image", job.spec.String(), "backend", job.bname, "cacheImage", e.Image, "took", time.Since(start).Round(time.Millisecond))
		p.evictCache(ctx, reg, job.bname, e.Key)
		return e, nil
	}
}

// fillEntry copies the golden image under the held lock, renewing it, and
// records the entry. The lock is released when the entry is recorded or
// everything was undone; otherwise it stays, naming the image for the
// filler that takes it over.
func (p *Provisioner) fillEntry(ctx context.Context, reg *records.Registry, job fillJob, held, prev *records.CacheFill) (records.CacheEntry, error) {
	log := p.Log.With("image", job.spec.String(), "backend", job.bname, "cacheImage", held.Image)
	fctx, stop := context.WithCancel(ctx)
	renewed := make(chan struct{})
	go func() { // the heartbeat: renews the lock; stops the fill if it was taken over
		defer close(renewed)
		t := time.NewTicker(CacheFillGrace / 4)
		defer t.Stop()
		for {
			select {
			case <-fctx.Done():
				return
			case <-t.C:
				if err := reg.RenewCacheFill(fctx, held); errors.Is(err, records.ErrConflict) {
					log.Error("image-cache fill lock taken over by another filler; stopping", "error", err)
					stop()
					return
				} else if err != nil {
					log.Warn("could not renew the image-cache fill lock", "error", err)
				}
			}
		}
	}()
	entry := records.CacheEntry{FSID: job.fsid(), Key: job.key, Backend: job.bname, Pool: job.pool, Image: held.Image,
		Source: job.spec.String(), Fingerprint: job.info.Fingerprint(job.src.ClusterID()), SizeBytes: job.info.SizeBytes,
		Created: time.Now().UTC(), LastUsed: time.Now().UTC()}
	err := flow.Run(fctx, log, []flow.Step{
		{
			Name: "remove an abandoned cache fill",
			Do: func(ctx context.Context) error {
				if prev == nil || prev.Image == "" {
					return nil
				}
				log.Info("taking over an abandoned image-cache fill", "previousOwner", prev.Owner, "previousImage", prev.Image)
				return p.removeCacheImage(ctx, prev.Backend, prev.Image)
			},
		},
		{
			Name: "copy the golden image",
			Do:   func(ctx context.Context) error { return job.cl.CopyFrom(ctx, job.src, job.spec, held.Image) },
			Undo: func(ctx context.Context) error { return job.cl.RemoveImage(ctx, held.Image) },
		},
		{
			Name: "snapshot the cache image",
			Do: func(ctx context.Context) error {
				_, err := job.cl.CreateSnapshot(ctx, held.Image, CacheSnap, 0)
				return err
			},
			Undo: func(ctx context.Context) error { return job.cl.RemoveSnapshot(ctx, held.Image, CacheSnap) },
		},
		{
			Name: "record the cache entry",
			Do:   func(ctx context.Context) error { return reg.SaveCacheEntry(ctx, entry) },
		},
	}...)
	stop()
	<-renewed // the heartbeat no longer touches held
	if err != nil && undoFailed(err) {
		return records.CacheEntry{}, errorf(Internal, err, "filling the image cache of backend %s with %s failed and its clean-up is pending (the next fill takes it over)", job.bname, job.spec)
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), flow.UndoTimeout)
	defer cancel()
	if rerr := reg.ReleaseCacheFill(rctx, held); rerr != nil {
		log.Warn("could not release the image-cache fill lock (the next fill of this entry takes it over)", "error", rerr)
	}
	if err != nil {
		return records.CacheEntry{}, errorf(Internal, err, "filling the image cache of backend %s with %s", job.bname, job.spec)
	}
	return entry, nil
}

// removeCacheImage removes a cache image (its snapshot first) from backend
// bname; absent is success, ErrHasSnapshots while clones still need it.
func (p *Provisioner) removeCacheImage(ctx context.Context, bname, image string) error {
	cl, _, err := p.Backends.Get(bname)
	if err != nil {
		return err
	}
	// With clone v2 a snapshot that still has clones goes to the trash,
	// where it waits for them; the image then cannot be removed yet.
	if err := cl.RemoveSnapshot(ctx, image, CacheSnap); err != nil {
		return err
	}
	return cl.RemoveImage(ctx, image)
}

// noteCacheHit counts a hit and the entry's last use (for the LRU order).
// The records are written in the background, one flusher at a time, so
// that concurrent hits neither wait for nor overwrite each other; counts
// not yet written when the controller dies are lost (the figures are
// approximate, the LRU order slightly older).
func (p *Provisioner) noteCacheHit(reg *records.Registry, e records.CacheEntry) {
	p.hitsMu.Lock()
	defer p.hitsMu.Unlock()
	if p.hits == nil {
		p.hits = map[string]*pendingHits{}
	}
	id := e.FSID + "/" + e.Key
	h := p.hits[id]
	if h == nil {
		h = &pendingHits{entry: e}
		p.hits[id] = h
	}
	h.n++
	h.last = time.Now().UTC()
	if !p.hitFlushing {
		p.hitFlushing = true
		go p.flushHits(reg)
	}
}

type pendingHits struct {
	entry records.CacheEntry
	n     int64
	last  time.Time
}

func (p *Provisioner) flushHits(reg *records.Registry) {
	for {
		p.hitsMu.Lock()
		batch := p.hits
		p.hits = nil
		if len(batch) == 0 {
			p.hitFlushing = false
			p.hitsMu.Unlock()
			return
		}
		p.hitsMu.Unlock()
		for _, h := range batch {
			ctx, cancel := context.WithTimeout(context.Background(), flow.UndoTimeout)
			cur, err := reg.CacheEntry(ctx, h.entry.FSID, h.entry.Key)
			if err == nil {
				cur.Hits += h.n
				cur.LastUsed = h.last
				err = reg.SaveCacheEntry(ctx, cur)
			}
			cancel()
			if err != nil && !errors.Is(err, records.ErrNotFound) { // not found: evicted meanwhile
				p.Log.Warn("could not record image-cache hits", "cacheImage", h.entry.Image, "hits", h.n, "error", err)
			}
		}
	}
}

// evictCache applies backend bname's limits to its entries (keeping keep,
// the entry just filled) and retries the removal of retired images. It
// logs what it cannot do: eviction is retried after every fill.
func (p *Provisioner) evictCache(ctx context.Context, reg *records.Registry, bname, keep string) {
	_, bcfg, err := p.Backends.Get(bname)
	if err != nil {
		return
	}
	entries, err := reg.CacheEntries(ctx)
	if err != nil {
		p.Log.Warn("could not list image-cache entries for eviction", "backend", bname, "error", err)
		return
	}
	var mine []records.CacheEntry
	for _, e := range entries {
		if e.Backend == bname {
			mine = append(mine, e)
		}
	}
	for _, v := range chooseEvictions(mine, keep, bcfg.ImageCache.MaxCount, uint64(bcfg.ImageCache.MaxSizeGiB)<<30) {
		if err := p.evictEntry(ctx, reg, v.entry); err != nil {
			p.Log.Warn("could not evict an image-cache entry", "backend", bname, "cacheImage", v.entry.Image, "error", err)
			continue
		}
		metrics.CacheEvicted(bname, v.reason)
		p.Log.Info("image-cache entry evicted", "backend", bname, "cacheImage", v.entry.Image, "source", v.entry.Source, "reason", v.reason)
	}
	p.removeRetired(ctx, reg, bname)
}

// evictEntry retires an entry's image (so that a crash leaves a record of
// it), drops the entry, then tries to remove the image.
func (p *Provisioner) evictEntry(ctx context.Context, reg *records.Registry, e records.CacheEntry) error {
	r := records.RetiredCacheImage{Backend: e.Backend, Image: e.Image, Retired: time.Now().UTC()}
	if err := reg.RetireCacheImage(ctx, r); err != nil {
		return err
	}
	if err := reg.DropCacheEntry(ctx, e); err != nil {
		return err
	}
	return p.removeRetiredImage(ctx, reg, r)
}

// removeRetired retries the removal of backend bname's retired images.
func (p *Provisioner) removeRetired(ctx context.Context, reg *records.Registry, bname string) {
	retired, err := reg.RetiredCacheImages(ctx)
	if err != nil {
		p.Log.Warn("could not list retired image-cache images", "error", err)
		return
	}
	for _, r := range retired {
		if r.Backend == bname {
			if err := p.removeRetiredImage(ctx, reg, r); err != nil {
				p.Log.Warn("could not remove a retired image-cache image", "backend", bname, "cacheImage", r.Image, "error", err)
			}
		}
	}
}

func (p *Provisioner) removeRetiredImage(ctx context.Context, reg *records.Registry, r records.RetiredCacheImage) error {
	err := p.removeCacheImage(ctx, r.Backend, r.Image)
	if errors.Is(err, backend.ErrHasSnapshots) || errors.Is(err, backend.ErrBusy) {
		return nil // clones still need it: kept, retried at the next pass
	}
	if err != nil {
		return err
	}
	return reg.ForgetRetiredCacheImage(ctx, r)
}

type eviction struct {
	entry  records.CacheEntry
	reason string
}

// chooseEvictions picks which of one backend's entries to evict: those
// whose golden image has a newer entry (its snapshot was replaced), then
// the least recently used until at most maxCount entries and maxSize bytes
// remain (0: no bound). keep, the entry just filled, is never chosen.
func chooseEvictions(entries []records.CacheEntry, keep string, maxCount int, maxSize uint64) []eviction {
	newest := map[string]time.Time{}
	for _, e := range entries {
		if e.Created.After(newest[e.Source]) {
			newest[e.Source] = e.Created
		}
	}
	var out []eviction
	var live []records.CacheEntry
	for _, e := range entries {
		if e.Key != keep && e.Created.Before(newest[e.Source]) {
			out = append(out, eviction{e, "stale"})
			continue
		}
		live = append(live, e)
	}
	sort.Slice(live, func(i, j int) bool { return live[i].LastUsed.Before(live[j].LastUsed) })
	var size uint64
	for _, e := range live {
		size += e.SizeBytes
	}
	count := len(live)
	for _, e := range live {
		reason := ""
		switch {
		case maxCount > 0 && count > maxCount:
			reason = "count"
		case maxSize > 0 && size > maxSize:
			reason = "size"
		}
		if reason == "" {
			break
		}
		if e.Key == keep {
			continue
		}
		out = append(out, eviction{e, reason})
		count--
		size -= e.SizeBytes
	}
	return out
}

// CacheEntries lists the image cache for `basalt-csi images`: the ready
// entries and the retired images still waiting for their clones.
func (p *Provisioner) CacheEntries(ctx context.Context) ([]records.CacheEntry, []records.RetiredCacheImage, error) {
	reg, err := p.registry()
	if err != nil {
		return nil, nil, err
	}
	entries, err := reg.CacheEntries(ctx)
	if err != nil {
		return nil, nil, classify(err, "listing the image cache")
	}
	retired, err := reg.RetiredCacheImages(ctx)
	return entries, retired, classify(err, "listing retired cache images")
}

// WarmCache fills the entry of golden image spec in backend bname, or in
// every backend with its cache on whose cluster lacks spec (bname ""), as
// a create would: `basalt-csi images warm`.
func (p *Provisioner) WarmCache(ctx context.Context, spec backend.ImageSpec, bname string) ([]records.CacheEntry, error) {
	reg, err := p.registry()
	if err != nil {
		return nil, err
	}
	o, err := p.findImage(ctx, spec)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, b := range p.Backends.Config().Backends {
		if (bname == "" && b.ImageCache.Enabled) || b.Name == bname {
			names = append(names, b.Name)
		}
	}
	if len(names) == 0 {
		if bname != "" {
			return nil, errorf(NotFound, nil, "no backend is named %q", bname)
		}
		return nil, errorf(FailedPrecondition, nil, "no backend has imageCache.enabled")
	}
	var out []records.CacheEntry
	done := map[string]bool{} // one entry per cluster
	for _, name := range names {
		cl, bcfg, err := p.Backends.Get(name)
		if err != nil {
			return out, errorf(Unavailable, err, "backend %s", name)
		}
		fsid := cl.ClusterID()
		if o.sources[fsid] != nil || done[fsid] {
			continue // the golden image is there: volumes clone it directly
		}
		if !bcfg.ImageCache.Enabled {
			return out, errorf(FailedPrecondition, nil, "backend %s has imageCache.enabled false", name)
		}
		e, _, err := p.cacheEntry(ctx, reg, name, cl, spec, pickSource(o.sources))
		if err != nil {
			return out, err
		}
		done[fsid] = true
		out = append(out, e)
	}
	return out, nil
}

// checkCacheImage reports (and with repair removes) a cache image that no
// entry, retired record or running fill accounts for: what a fill whose
// undo failed, or an eviction cut short, may leave.
func (p *Provisioner) checkCacheImage(ctx context.Context, reg *records.Registry, cl backend.Cluster, bname, img string, repair bool) (Finding, bool) {
	key, _, _ := strings.Cut(strings.TrimPrefix(img, volumeid.CachePrefix), "-")
	if e, err := reg.CacheEntry(ctx, cl.ClusterID(), key); err == nil && e.Backend == bname && e.Image == img {
		return Finding{}, false
	}
	if f, err := reg.CacheFillLock(ctx, cl.ClusterID(), key); err == nil && f.Backend == bname && f.Image == img {
		return Finding{}, false
	}
	retired, err := reg.RetiredCacheImages(ctx)
	if err != nil {
		return Finding{}, false // cannot tell now
	}
	for _, r := range retired {
		if r.Backend == bname && r.Image == img {
			return Finding{}, false
		}
	}
	f := Finding{Backend: bname, Kind: "orphan-cache-image", Object: img, Detail: "no image-cache entry, retired image or fill accounts for it"}
	if repair {
		err := p.removeCacheImage(ctx, bname, img)
		f.Repaired = err == nil
		if err != nil {
			f.Detail += "; not removed: " + err.Error()
		}
	}
	return f, true
}
