// Package node is the node plugin's work: registering the node in Ceph (like
// Cinder's service records) and, with the mappers, staging and publishing.
package node

import (
	"context"
	"log/slog"
	"time"

	"github.com/basalt-csi/basalt/pkg/backend"
	"github.com/basalt-csi/basalt/pkg/records"
)

// Heartbeat registers the node and refreshes its last-seen time every
// interval until ctx ends. While the registry backend is unreachable it
// keeps trying; the first success is logged, as is every state change.
func Heartbeat(ctx context.Context, mgr *backend.Manager, n records.Node, interval, timeout time.Duration, log *slog.Logger) {
	registered := false
	failing := false
	for {
		err := registerOnce(ctx, mgr, &n, timeout)
		switch {
		case err != nil && !failing:
			log.Error("cannot register the node in the registry backend; retrying", "node", n.ID, "error", err)
			failing = true
		case err == nil && !registered:
			log.Info("node registered", "node", n.ID, "zone", n.Zone, "maxVolumes", n.MaxVolumes, "mapper", n.Mapper)
			registered, failing = true, false
		case err == nil && failing:
			log.Info("node registration refreshed again", "node", n.ID)
			failing = false
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}

func registerOnce(ctx context.Context, mgr *backend.Manager, n *records.Node, timeout time.Duration) error {
	cl, err := mgr.Registry()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	reg := records.NewRegistry(cl)
	if n.Registered.IsZero() {
		// Keep the first registration time across plugin restarts.
		if old, err := reg.Node(ctx, n.ID); err == nil {
			n.Registered = old.Registered
		}
	}
	return reg.RegisterNode(ctx, *n)
}
