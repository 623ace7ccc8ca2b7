package records

import (
	"context"
	"errors"
)

// incarnationsOID: process identity -> the Ceph client addresses of its
// latest incarnation, per backend.
const incarnationsOID = "basalt.incarnations"

// Incarnation returns the client addresses (backend -> addrs) that the
// process called identity recorded last; empty if none.
func (g *Registry) Incarnation(ctx context.Context, identity string) (map[string]string, error) {
	m, err := indexEntry[map[string]string](ctx, g.Store, incarnationsOID, identity)
	if errors.Is(err, ErrNotFound) {
		return map[string]string{}, nil
	}
	return m, err
}

// SaveIncarnation records this incarnation's client addresses.
func (g *Registry) SaveIncarnation(ctx context.Context, identity string, addrs map[string]string) error {
	return indexPut(ctx, g.Store, incarnationsOID, identity, addrs)
}
