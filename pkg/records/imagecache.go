package records

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Records of the image-volume cache (README, "Image-volume cache").
const (
	// cacheIndexOID: "<fsid>/<key>" -> CacheEntry, for every ready entry.
	cacheIndexOID = "basalt.imagecache"
	// retiredIndexOID: "<backend>/<image>" -> RetiredCacheImage, for
	// evicted entries whose image still has clones that need it.
	retiredIndexOID = "basalt.imagecache-retired"
	// cacheFillPrefix names the object a filler creates exclusively: the
	// durable lock that makes concurrent first creates copy once.
	cacheFillPrefix = "basalt.imagecache.fill."
)

// CacheEntry is one golden image copied into a cluster: its image (in the
// pool of Backend) and that image's snapshot "cache", which volumes clone.
type CacheEntry struct {
	FSID        string    `json:"fsid"` // the cluster it serves
	Key         string    `json:"key"`  // hash of Source and Fingerprint
	Backend     string    `json:"backend"`
	Pool        string    `json:"pool"`
	Image       string    `json:"image"`
	Source      string    `json:"source"`      // pool/image@snap of the golden image
	Fingerprint string    `json:"fingerprint"` // of the golden snapshot copied
	SizeBytes   uint64    `json:"sizeBytes"`
	Created     time.Time `json:"created"`
	LastUsed    time.Time `json:"lastUsed"`
	Hits        int64     `json:"hits"` // creates cloned from it after the one that filled it
}

func cacheKey(fsid, key string) string { return fsid + "/" + key }

// CacheEntry returns a ready entry, or ErrNotFound.
func (g *Registry) CacheEntry(ctx context.Context, fsid, key string) (CacheEntry, error) {
	return indexEntry[CacheEntry](ctx, g.Store, cacheIndexOID, cacheKey(fsid, key))
}

// SaveCacheEntry writes an entry (a new one, or its use counters).
func (g *Registry) SaveCacheEntry(ctx context.Context, e CacheEntry) error {
	return indexPut(ctx, g.Store, cacheIndexOID, cacheKey(e.FSID, e.Key), e)
}

// DropCacheEntry removes an entry from the index: no new volume clones it.
func (g *Registry) DropCacheEntry(ctx context.Context, e CacheEntry) error {
	return g.Store.IndexRemove(ctx, cacheIndexOID, cacheKey(e.FSID, e.Key))
}

// CacheEntries lists every ready entry (at most a few per backend: they are
// bounded by the backends' maxCount).
func (g *Registry) CacheEntries(ctx context.Context) ([]CacheEntry, error) {
	return AllPages(func(after string) ([]CacheEntry, string, error) {
		return indexPage[CacheEntry](ctx, g.Store, cacheIndexOID, "", after, 1000)
	})
}

// RetiredCacheImage is an evicted entry's image, kept while clones need it.
type RetiredCacheImage struct {
	Backend string    `json:"backend"`
	Image   string    `json:"image"`
	Retired time.Time `json:"retired"`
}

// RetireCacheImage records an evicted entry's image still to be removed.
func (g *Registry) RetireCacheImage(ctx context.Context, r RetiredCacheImage) error {
	return indexPut(ctx, g.Store, retiredIndexOID, r.Backend+"/"+r.Image, r)
}

// RetiredCacheImages lists them.
func (g *Registry) RetiredCacheImages(ctx context.Context) ([]RetiredCacheImage, error) {
	return AllPages(func(after string) ([]RetiredCacheImage, string, error) {
		return indexPage[RetiredCacheImage](ctx, g.Store, retiredIndexOID, "", after, 1000)
	})
}

// ForgetRetiredCacheImage drops the record once the image is gone.
func (g *Registry) ForgetRetiredCacheImage(ctx context.Context, r RetiredCacheImage) error {
	return g.Store.IndexRemove(ctx, retiredIndexOID, r.Backend+"/"+r.Image)
}

// CacheFill is the durable lock of one entry being filled.
type CacheFill struct {
	FSID    string    `json:"fsid"`
	Key     string    `json:"key"`
	Backend string    `json:"backend"` // where the image is being written
	Image   string    `json:"image"`
	Owner   string    `json:"owner"` // controller instance and fill
	Started time.Time `json:"started"`
	Updated time.Time `json:"updated"` // renewed while the fill runs

	version uint64
}

func cacheFillOID(fsid, key string) string { return cacheFillPrefix + fsid + "." + key }

// TakeCacheFill takes the fill lock of (f.FSID, f.Key) for f.Owner. The
// lock is taken over when its holder stopped renewing it for grace, or when
// stale(holder) says its holder is dead. It returns the lock as held (held
// is the previous holder's, if it was taken over: its image is to be
// removed) or ErrExists while another live filler holds it.
func (g *Registry) TakeCacheFill(ctx context.Context, f CacheFill, grace time.Duration, stale func(owner string) bool) (taken *CacheFill, held *CacheFill, err error) {
	f.Started, f.Updated = g.now(), g.now()
	data, err := json.Marshal(f)
	if err != nil {
		return nil, nil, err
	}
	oid := cacheFillOID(f.FSID, f.Key)
	v, err := g.Store.Create(ctx, oid, data)
	if err == nil {
		f.version = v
		return &f, nil, nil
	}
	if !errors.Is(err, ErrExists) {
		return nil, nil, err
	}
	raw, ver, err := g.Store.Get(ctx, oid)
	if errors.Is(err, ErrNotFound) {
		return nil, nil, ErrExists // released meanwhile: the caller looks again
	}
	if err != nil {
		return nil, nil, err
	}
	var prev CacheFill
	if err := json.Unmarshal(raw, &prev); err != nil {
		return nil, nil, fmt.Errorf("fill lock %s is corrupt: %w", oid, err)
	}
	if g.now().Sub(prev.Updated) < grace && !stale(prev.Owner) {
		return nil, &prev, ErrExists
	}
	v, err = g.Store.Update(ctx, oid, ver, data)
	if errors.Is(err, ErrConflict) {
		return nil, nil, ErrExists // another filler took it over first
	}
	if err != nil {
		return nil, nil, err
	}
	f.version = v
	return &f, &prev, nil
}

// RenewCacheFill tells other fillers this one is alive; ErrConflict when it
// was taken over (the fill must stop).
func (g *Registry) RenewCacheFill(ctx context.Context, f *CacheFill) error {
	next := *f
	next.Updated = g.now()
	data, err := json.Marshal(next)
	if err != nil {
		return err
	}
	v, err := g.Store.Update(ctx, cacheFillOID(f.FSID, f.Key), f.version, data)
	if err != nil {
		return err
	}
	next.version = v
	*f = next
	return nil
}

// ReleaseCacheFill drops the lock if it is still f's.
func (g *Registry) ReleaseCacheFill(ctx context.Context, f *CacheFill) error {
	err := g.Store.DeleteVersion(ctx, cacheFillOID(f.FSID, f.Key), f.version)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// CacheFillLock reads the fill lock of an entry, or ErrNotFound.
func (g *Registry) CacheFillLock(ctx context.Context, fsid, key string) (CacheFill, error) {
	raw, _, err := g.Store.Get(ctx, cacheFillOID(fsid, key))
	if err != nil {
		return CacheFill{}, err
	}
	var f CacheFill
	err = json.Unmarshal(raw, &f)
	return f, err
}
