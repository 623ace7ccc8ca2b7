// Package records keeps Basalt's durable state (name reservations and the
// volume index) in RADOS, through the small Store interface that pkg/ceph
// implements. Like ceph-csi's journal, a request name maps durably to a
// volume UUID; unlike it, each reservation is its own object created
// exclusively, so concurrent duplicates cannot both win, and updates are
// compare-and-write on the object version.
package records

import (
	"context"
	"errors"
)

// Errors a Store returns, wrapped or not.
var (
	ErrNotFound = errors.New("record not found")
	ErrExists   = errors.New("record already exists")
	ErrConflict = errors.New("record changed concurrently")
)

// KV is one omap entry.
type KV struct {
	Key   string
	Value []byte
}

// Store is the subset of RADOS that records need: small objects with a
// version for compare-and-write, and omap indexes for cheap paginated listing.
type Store interface {
	// Get returns the object's data and version.
	Get(ctx context.Context, oid string) ([]byte, uint64, error)
	// Create writes a new object and returns its version; ErrExists if it is
	// already there.
	Create(ctx context.Context, oid string, data []byte) (uint64, error)
	// Update replaces the data if the version still matches and returns the
	// new version; ErrConflict if it does not match.
	Update(ctx context.Context, oid string, version uint64, data []byte) (uint64, error)
	// Delete removes the object; absent is success.
	Delete(ctx context.Context, oid string) error
	// DeleteVersion removes the object if nobody changed it since version
	// (one compound operation); ErrConflict otherwise.
	DeleteVersion(ctx context.Context, oid string, version uint64) error
	// IndexSet sets omap keys on oid, creating it if needed.
	IndexSet(ctx context.Context, oid string, kv map[string][]byte) error
	// IndexRemove removes omap keys; absent keys or object are success.
	IndexRemove(ctx context.Context, oid string, keys ...string) error
	// IndexGet returns the values of the keys that exist.
	IndexGet(ctx context.Context, oid string, keys ...string) (map[string][]byte, error)
	// IndexList returns up to max entries with key > startAfter that start
	// with prefix, in key order.
	IndexList(ctx context.Context, oid, startAfter, prefix string, max int) ([]KV, error)
}
