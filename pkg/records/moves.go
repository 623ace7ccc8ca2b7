package records

import (
	"context"
	"time"
)

// movesOID indexes the volumes that a retype moved, or is moving, away
// from the pool their ID names: volume ID -> Move.
const movesOID = "basalt.moves"

// Move states. A move is undone while it is Started and finished once it
// is Switched: Switched is the point of no return, where clients start to
// use the volume at its new place.
const (
	MoveStarted  = "started"
	MoveSwitched = "switched"
	MoveDone     = "done"
)

// Move methods.
const (
	MoveMigrate = "migrate" // RBD live migration, within one cluster
	MoveCopy    = "copy"    // a copy to another cluster, then removal
)

// Location is where a volume's image is: a backend's cluster and pool.
type Location struct {
	Backend string `json:"backend"`
	FSID    string `json:"fsid"` // 32 hex, as in volume IDs
	PoolID  int64  `json:"poolID"`
}

// Move records where a moved volume is. CSI volume IDs never change, and
// Basalt's name the cluster and pool the volume was created in: once a
// volume moved, this record is what finds it (see provision.Lookup).
type Move struct {
	VolumeID string    `json:"volumeID"`
	State    string    `json:"state"`
	Method   string    `json:"method"`
	From     Location  `json:"from"`
	To       Location  `json:"to"`
	Owner    string    `json:"owner,omitempty"` // the controller instance moving it
	Updated  time.Time `json:"updated"`
}

// Current is where clients find the volume while this record exists, and
// false while the move can still be undone (the volume is then unusable:
// only the mover knows which copy counts).
func (m Move) Current() (Location, bool) {
	if m.State == MoveStarted {
		return Location{}, false
	}
	return m.To, true
}

// Move returns volumeID's move record, or ErrNotFound for a volume that
// never moved.
func (g *Registry) Move(ctx context.Context, volumeID string) (Move, error) {
	return indexEntry[Move](ctx, g.Store, movesOID, volumeID)
}

// SaveMove writes m (stamped now).
func (g *Registry) SaveMove(ctx context.Context, m *Move) error {
	m.Updated = g.now().UTC()
	return indexPut(ctx, g.Store, movesOID, m.VolumeID, m)
}

// DropMove removes volumeID's move record (absent is success).
func (g *Registry) DropMove(ctx context.Context, volumeID string) error {
	return g.Store.IndexRemove(ctx, movesOID, volumeID)
}

// Moves returns up to max move records after startAfter, and the token of
// the next page ("" at the end).
func (g *Registry) Moves(ctx context.Context, startAfter string, max int) ([]Move, string, error) {
	return indexPage[Move](ctx, g.Store, movesOID, "", startAfter, max)
}
