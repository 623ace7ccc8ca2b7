package records

import (
	"context"
	"time"
)

// Object names of the snapshot records and of the deferred work they cause.
const (
	snapshotIndexOID = "basalt.snapshots" // snapshot ID -> SnapshotEntry
	// deletedIndexOID lists deleted volumes whose image waits for its
	// snapshots (and their clones) to go: volume ID -> backend name.
	deletedIndexOID = "basalt.deleted"
	// flattenIndexOID lists volumes whose clone chain is too deep and which
	// the background flattener must detach from their parent.
	flattenIndexOID = "basalt.flatten"
	// groupIndexOID: group snapshot ID -> GroupEntry.
	groupIndexOID = "basalt.groupsnapshots"
)

// GroupEntry is one volume group snapshot; its members are in the snapshot
// index too.
type GroupEntry struct {
	GroupSnapshotID string    `json:"groupSnapshotID"`
	Name            string    `json:"name"`
	Backend         string    `json:"backend"`
	SnapshotIDs     []string  `json:"snapshotIDs"`
	Created         time.Time `json:"created"`
}

// IndexGroup adds a group snapshot to the index.
func (g *Registry) IndexGroup(ctx context.Context, e GroupEntry) error {
	return indexPut(ctx, g.Store, groupIndexOID, e.GroupSnapshotID, e)
}

// UnindexGroup removes a group snapshot from the index.
func (g *Registry) UnindexGroup(ctx context.Context, id string) error {
	return g.Store.IndexRemove(ctx, groupIndexOID, id)
}

// Group returns the index entry of a group snapshot, or ErrNotFound.
func (g *Registry) Group(ctx context.Context, id string) (GroupEntry, error) {
	return indexEntry[GroupEntry](ctx, g.Store, groupIndexOID, id)
}

// Groups lists up to max group snapshot entries (ID -> GroupEntry JSON).
func (g *Registry) Groups(ctx context.Context, max int) ([]KV, error) {
	return g.Store.IndexList(ctx, groupIndexOID, "", "", max)
}

// SnapshotEntry is one snapshot in the index that ListSnapshots pages through.
type SnapshotEntry struct {
	SnapshotID     string    `json:"snapshotID"`
	Name           string    `json:"name"`
	SourceVolumeID string    `json:"sourceVolumeID"`
	Backend        string    `json:"backend"`
	SizeBytes      uint64    `json:"sizeBytes"`
	Created        time.Time `json:"created"`
	// Depth is the clone depth of the volume when the snapshot was taken
	// (0: not recorded); a restore is one deeper.
	Depth int `json:"depth,omitempty"`
	// GroupSnapshotID is set for the members of a volume group snapshot.
	GroupSnapshotID string `json:"groupSnapshotID,omitempty"`
}

// IndexSnapshot adds a snapshot to the index.
func (g *Registry) IndexSnapshot(ctx context.Context, e SnapshotEntry) error {
	return indexPut(ctx, g.Store, snapshotIndexOID, e.SnapshotID, e)
}

// UnindexSnapshot removes a snapshot from the index.
func (g *Registry) UnindexSnapshot(ctx context.Context, snapshotID string) error {
	return g.Store.IndexRemove(ctx, snapshotIndexOID, snapshotID)
}

// Snapshot returns the index entry of snapshotID, or ErrNotFound.
func (g *Registry) Snapshot(ctx context.Context, snapshotID string) (SnapshotEntry, error) {
	return indexEntry[SnapshotEntry](ctx, g.Store, snapshotIndexOID, snapshotID)
}

// Snapshots returns up to max entries whose ID starts with prefix, after
// startAfter, and the token of the next page ("" at the end). One omap read
// of the page's size: a volume's snapshots share an ID prefix.
func (g *Registry) Snapshots(ctx context.Context, prefix, startAfter string, max int) ([]SnapshotEntry, string, error) {
	return indexPage[SnapshotEntry](ctx, g.Store, snapshotIndexOID, prefix, startAfter, max)
}

// MarkDeleted records that volumeID was deleted while snapshots of it
// remain, so its image (renamed) is removed once they are gone.
func (g *Registry) MarkDeleted(ctx context.Context, volumeID, backendName string) error {
	return g.Store.IndexSet(ctx, deletedIndexOID, map[string][]byte{volumeID: []byte(backendName)})
}

// UnmarkDeleted drops volumeID from the deleted list (its image is gone).
func (g *Registry) UnmarkDeleted(ctx context.Context, volumeID string) error {
	return g.Store.IndexRemove(ctx, deletedIndexOID, volumeID)
}

// IsDeleted tells whether volumeID is listed as deleted.
func (g *Registry) IsDeleted(ctx context.Context, volumeID string) (bool, error) {
	kv, err := g.Store.IndexGet(ctx, deletedIndexOID, volumeID)
	_, ok := kv[volumeID]
	return ok, err
}

// Deleted lists up to max deleted volumes whose images wait for removal.
func (g *Registry) Deleted(ctx context.Context, max int) ([]KV, error) {
	return g.Store.IndexList(ctx, deletedIndexOID, "", "", max)
}

// QueueFlatten asks the background flattener to flatten volumeID.
func (g *Registry) QueueFlatten(ctx context.Context, volumeID, backendName string) error {
	return g.Store.IndexSet(ctx, flattenIndexOID, map[string][]byte{volumeID: []byte(backendName)})
}

// FlattenDone removes volumeID from the flatten queue.
func (g *Registry) FlattenDone(ctx context.Context, volumeID string) error {
	return g.Store.IndexRemove(ctx, flattenIndexOID, volumeID)
}

// FlattenQueue lists up to max volumes waiting to be flattened.
func (g *Registry) FlattenQueue(ctx context.Context, max int) ([]KV, error) {
	return g.Store.IndexList(ctx, flattenIndexOID, "", "", max)
}
