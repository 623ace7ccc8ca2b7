package records

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Object names in the registry backend's pool (namespace chosen by the store).
const (
	volumeIndexOID    = "basalt.volumes"
	pendingIndexOID   = "basalt.pending" // names whose create has not finished
	reservationPrefix = "basalt.name."
)

// Kind tells what a reservation names: CSI volume names and snapshot names
// are separate namespaces.
type Kind string

// Reservation kinds.
const (
	KindVolume   Kind = ""
	KindSnapshot Kind = "snapshot"
	KindGroup    Kind = "group-snapshot"
)

// pendingOID lists the names of kind whose create has not finished.
func pendingOID(k Kind) string {
	switch k {
	case KindSnapshot:
		return "basalt.pending-snapshots"
	case KindGroup:
		return "basalt.pending-groups"
	}
	return pendingIndexOID
}

// Reservation states.
const (
	StateCreating = "creating"
	StateReady    = "ready"
)

// Reservation binds a CreateVolume (or CreateSnapshot) request name to one
// volume (snapshot) for good. For snapshots, VolumeID holds the snapshot ID
// and Source the source volume ID.
type Reservation struct {
	Kind      Kind              `json:"kind,omitempty"`
	Name      string            `json:"name"`
	UUID      string            `json:"uuid"`
	State     string            `json:"state"`
	SizeBytes uint64            `json:"sizeBytes"`
	Params    map[string]string `json:"params,omitempty"`
	Backend   string            `json:"backend,omitempty"`
	VolumeID  string            `json:"volumeID,omitempty"`
	Source    string            `json:"source,omitempty"`
	Owner     string            `json:"owner,omitempty"` // the controller instance that made it
	Created   time.Time         `json:"created"`
	Updated   time.Time         `json:"updated"`

	version uint64
}

// VolumeEntry is one volume in the index that ListVolumes pages through.
type VolumeEntry struct {
	VolumeID  string    `json:"volumeID"`
	Name      string    `json:"name"`
	Backend   string    `json:"backend"`
	Zone      string    `json:"zone"`
	SizeBytes uint64    `json:"sizeBytes"`
	Source    string    `json:"source,omitempty"`
	Created   time.Time `json:"created"`
}

// Registry is the typed view of the records on one Store.
type Registry struct {
	Store Store
	now   func() time.Time
}

// NewRegistry wraps a store.
func NewRegistry(s Store) *Registry { return &Registry{Store: s, now: time.Now} }

// reservationOID hashes the name: CSI names may be up to 128 arbitrary bytes,
// RADOS object names should stay short and printable.
func reservationOID(k Kind, name string) string {
	sum := sha256.Sum256([]byte(name))
	switch k {
	case KindSnapshot:
		return "basalt.snapname." + hex.EncodeToString(sum[:20])
	case KindGroup:
		return "basalt.groupname." + hex.EncodeToString(sum[:20])
	}
	return reservationPrefix + hex.EncodeToString(sum[:20])
}

// Reserve creates the reservation for r.Name, or returns the one that already
// exists (created=false). Exactly one of several concurrent callers creates it.
func (g *Registry) Reserve(ctx context.Context, r Reservation) (Reservation, bool, error) {
	now := g.now().UTC()
	r.Created, r.Updated = now, now
	data, err := json.Marshal(r)
	if err != nil {
		return Reservation{}, false, err
	}
	// Listed as pending first, so a crash right after the create below still
	// leaves a trace that Recover finds.
	if err := g.Store.IndexSet(ctx, pendingOID(r.Kind), map[string][]byte{r.Name: []byte(r.UUID)}); err != nil {
		return Reservation{}, false, fmt.Errorf("reserving name %q: %w", r.Name, err)
	}
	ver, err := g.Store.Create(ctx, reservationOID(r.Kind, r.Name), data)
	if err == nil {
		r.version = ver
		return r, true, nil
	}
	if !errors.Is(err, ErrExists) {
		return Reservation{}, false, fmt.Errorf("reserving name %q: %w", r.Name, err)
	}
	existing, err := g.Reservation(ctx, r.Kind, r.Name)
	if err == nil && existing.State == StateReady {
		// The pending mark set above belongs to no unfinished create.
		err = g.Store.IndexRemove(ctx, pendingOID(r.Kind), r.Name)
	}
	return existing, false, err
}

// Reservation loads the reservation of name.
func (g *Registry) Reservation(ctx context.Context, k Kind, name string) (Reservation, error) {
	data, ver, err := g.Store.Get(ctx, reservationOID(k, name))
	if err != nil {
		return Reservation{}, err
	}
	var r Reservation
	if err := json.Unmarshal(data, &r); err != nil {
		return Reservation{}, fmt.Errorf("reservation of %q is corrupt: %w", name, err)
	}
	if r.Name != name {
		return Reservation{}, fmt.Errorf("reservation object of %q holds name %q (hash collision?)", name, r.Name)
	}
	r.version = ver
	return r, nil
}

// Save writes r back if nobody changed it since it was loaded.
func (g *Registry) Save(ctx context.Context, r *Reservation) error {
	r.Updated = g.now().UTC()
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	ver, err := g.Store.Update(ctx, reservationOID(r.Kind, r.Name), r.version, data)
	if err != nil {
		return fmt.Errorf("updating reservation of %q: %w", r.Name, err)
	}
	r.version = ver
	if r.State == StateReady {
		return g.Store.IndexRemove(ctx, pendingOID(r.Kind), r.Name)
	}
	return nil
}

// Release deletes the reservation of name, if it still belongs to uuid.
func (g *Registry) Release(ctx context.Context, k Kind, name, uuid string) error {
	r, err := g.Reservation(ctx, k, name)
	if errors.Is(err, ErrNotFound) {
		return g.Store.IndexRemove(ctx, pendingOID(k), name)
	}
	if err != nil {
		return err
	}
	if r.UUID != uuid {
		return nil
	}
	if err := g.Store.Delete(ctx, reservationOID(k, name)); err != nil {
		return err
	}
	return g.Store.IndexRemove(ctx, pendingOID(k), name)
}

// Pending lists the names whose create has not finished (up to max).
func (g *Registry) Pending(ctx context.Context, k Kind, max int) ([]string, error) {
	kvs, err := g.Store.IndexList(ctx, pendingOID(k), "", "", max)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(kvs))
	for _, kv := range kvs {
		names = append(names, kv.Key)
	}
	return names, nil
}

// Forget drops name from the pending list (its create finished or was undone).
func (g *Registry) Forget(ctx context.Context, k Kind, name string) error {
	return g.Store.IndexRemove(ctx, pendingOID(k), name)
}

// IndexVolume adds (or refreshes) a volume in the index.
func (g *Registry) IndexVolume(ctx context.Context, e VolumeEntry) error {
	return indexPut(ctx, g.Store, volumeIndexOID, e.VolumeID, e)
}

// indexPut stores v as the JSON value of key in the omap index oid.
func indexPut(ctx context.Context, s Store, oid, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.IndexSet(ctx, oid, map[string][]byte{key: data})
}

// UnindexVolume removes a volume from the index.
func (g *Registry) UnindexVolume(ctx context.Context, volumeID string) error {
	return g.Store.IndexRemove(ctx, volumeIndexOID, volumeID)
}

// Volume returns the index entry of volumeID, or ErrNotFound.
func (g *Registry) Volume(ctx context.Context, volumeID string) (VolumeEntry, error) {
	return indexEntry[VolumeEntry](ctx, g.Store, volumeIndexOID, volumeID)
}

// Volumes returns up to max index entries after startAfter, and the token for
// the next page ("" at the end). Its cost is proportional to max.
func (g *Registry) Volumes(ctx context.Context, startAfter string, max int) ([]VolumeEntry, string, error) {
	return indexPage[VolumeEntry](ctx, g.Store, volumeIndexOID, "", startAfter, max)
}

// indexEntry decodes the JSON value of key in the omap index oid, or ErrNotFound.
func indexEntry[T any](ctx context.Context, s Store, oid, key string) (T, error) {
	var e T
	kv, err := s.IndexGet(ctx, oid, key)
	if err != nil {
		return e, err
	}
	data, ok := kv[key]
	if !ok {
		return e, ErrNotFound
	}
	if err := json.Unmarshal(data, &e); err != nil {
		return e, fmt.Errorf("index entry of %s in %s is corrupt: %w", key, oid, err)
	}
	return e, nil
}

// AllPages reads a paged listing to its end.
func AllPages[T any](page func(after string) ([]T, string, error)) ([]T, error) {
	var all []T
	for after := ""; ; {
		items, next, err := page(after)
		if err != nil {
			return nil, err
		}
		all = append(all, items...)
		if next == "" {
			return all, nil
		}
		after = next
	}
}

// indexPage decodes up to max entries of the omap index oid whose keys start
// with prefix, after startAfter, and returns the token of the next page (""
// at the end): one omap read of max+1 keys, the extra one telling whether
// another page exists.
func indexPage[T any](ctx context.Context, s Store, oid, prefix, startAfter string, max int) ([]T, string, error) {
	kvs, err := s.IndexList(ctx, oid, startAfter, prefix, max+1)
	if err != nil {
		return nil, "", err
	}
	next := ""
	if len(kvs) > max {
		kvs = kvs[:max]
		next = kvs[max-1].Key
	}
	out := make([]T, 0, len(kvs))
	for _, kv := range kvs {
		var e T
		if err := json.Unmarshal(kv.Value, &e); err != nil {
			return nil, "", fmt.Errorf("index entry of %s in %s is corrupt: %w", kv.Key, oid, err)
		}
		out = append(out, e)
	}
	return out, next, nil
}

// ProvisionedByBackend sums the sizes of indexed volumes per backend: the
// provisioned capacity the thin-provisioning filter charges against.
func (g *Registry) ProvisionedByBackend(ctx context.Context) (map[string]uint64, error) {
	sums := map[string]uint64{}
	after := ""
	for {
		page, next, err := g.Volumes(ctx, after, 1000)
		if err != nil {
			return nil, err
		}
		for _, e := range page {
			sums[e.Backend] += e.SizeBytes
		}
		if next == "" {
			return sums, nil
		}
		after = next
	}
}
