package provision

import (
	"context"
	"errors"

	"github.com/basalt-csi/basalt/pkg/metrics"
	"github.com/basalt-csi/basalt/pkg/records"
)

// censusMax caps each list the census reads; past it the figures read "at
// least" (a backlog that large is an alert either way).
const censusMax = 10000

// Census reads what an operator watches from the registry (for the metrics
// scrape): each node with its last heartbeat and attachment count, the
// unfinished creates and the deferred work. It costs a few omap reads plus
// one read per unfinished create (in flight or interrupted: few).
func (p *Provisioner) Census(ctx context.Context) (metrics.Census, error) {
	var c metrics.Census
	reg, err := p.registry()
	if err != nil {
		return c, err
	}
	nodes, err := reg.Nodes(ctx)
	if err != nil {
		return c, classify(err, "listing nodes")
	}
	atts, err := reg.NodeAttachments(ctx, "")
	if err != nil {
		return c, classify(err, "reading the attachment index")
	}
	perNode := map[string]int{}
	for _, a := range atts {
		perNode[a.Node]++
	}
	for _, n := range nodes {
		c.Nodes = append(c.Nodes, metrics.NodeCensus{ID: n.ID, Zone: n.Zone, LastSeen: n.LastSeen, Attachments: perNode[n.ID]})
	}
	c.Pending = map[string]metrics.PendingCensus{}
	for kind, label := range map[records.Kind]string{records.KindVolume: "volume", records.KindSnapshot: "snapshot", records.KindGroup: "group"} {
		names, err := reg.Pending(ctx, kind, censusMax)
		if err != nil {
			return c, classify(err, "listing pending creates")
		}
		var pc metrics.PendingCensus
		for _, name := range names {
			res, err := reg.Reservation(ctx, kind, name)
			switch {
			case errors.Is(err, records.ErrNotFound):
				continue // released since the listing
			case err != nil:
				return c, classify(err, "reading a pending reservation")
			case res.State == records.StateReady:
				continue // finished; recovery unlists it
			}
			pc.Count++
			if pc.Oldest.IsZero() || res.Updated.Before(pc.Oldest) {
				pc.Oldest = res.Updated
			}
		}
		c.Pending[label] = pc
	}
	queue, err := reg.FlattenQueue(ctx, censusMax)
	if err != nil {
		return c, classify(err, "reading the flatten queue")
	}
	deleted, err := reg.Deleted(ctx, censusMax)
	if err != nil {
		return c, classify(err, "listing deleted volumes")
	}
	c.FlattenQueue, c.DeletedKept = len(queue), len(deleted)
	return c, nil
}
