package records

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// nodesIndexOID holds one entry per registered node: the analogue of
// Cinder's service records.
const nodesIndexOID = "basalt.nodes"

// Node is a node plugin's registration.
type Node struct {
	ID         string    `json:"id"`
	Zone       string    `json:"zone,omitempty"`
	MaxVolumes int64     `json:"maxVolumes"`
	Mapper     string    `json:"mapper"`
	Version    string    `json:"version"`
	Registered time.Time `json:"registered"`
	LastSeen   time.Time `json:"lastSeen"`
}

// RegisterNode writes (or refreshes) a node's record. Registered is kept
// from an earlier registration when the caller leaves it zero.
func (g *Registry) RegisterNode(ctx context.Context, n Node) error {
	n.LastSeen = g.now().UTC()
	if n.Registered.IsZero() {
		n.Registered = n.LastSeen
	}
	return indexPut(ctx, g.Store, nodesIndexOID, n.ID, n)
}

// Node returns a node's record, or ErrNotFound.
func (g *Registry) Node(ctx context.Context, id string) (Node, error) {
	kv, err := g.Store.IndexGet(ctx, nodesIndexOID, id)
	if err != nil {
		return Node{}, err
	}
	data, ok := kv[id]
	if !ok {
		return Node{}, fmt.Errorf("node %q: %w", id, ErrNotFound)
	}
	var n Node
	if err := json.Unmarshal(data, &n); err != nil {
		return Node{}, fmt.Errorf("record of node %q is corrupt: %w", id, err)
	}
	return n, nil
}

// Nodes lists every registered node, by ID.
func (g *Registry) Nodes(ctx context.Context) ([]Node, error) {
	var out []Node
	after := ""
	for {
		kvs, err := g.Store.IndexList(ctx, nodesIndexOID, after, "", 500)
		if err != nil {
			return nil, err
		}
		for _, kv := range kvs {
			var n Node
			if err := json.Unmarshal(kv.Value, &n); err != nil {
				return nil, fmt.Errorf("record of node %q is corrupt: %w", kv.Key, err)
			}
			out = append(out, n)
		}
		if len(kvs) < 500 {
			return out, nil
		}
		after = kvs[len(kvs)-1].Key
	}
}
