package provision

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/basalt-csi/basalt/pkg/backend"
	"github.com/basalt-csi/basalt/pkg/flow"
	"github.com/basalt-csi/basalt/pkg/metrics"
	"github.com/basalt-csi/basalt/pkg/records"
	"github.com/basalt-csi/basalt/pkg/scheduler"
	"github.com/basalt-csi/basalt/pkg/volumeid"
)

// Retype (Cinder's retype with migration): a ControllerModifyVolume whose
// placement parameters (backend, capability.<key>) the volume's backend does
// not meet moves the volume to one that does, chosen by the scheduler
// within the volume's zone. Within one Ceph cluster it is an RBD live
// migration; to another cluster, a copy. The volume keeps its ID: a move
// record (records.Move) tells Lookup where the volume is now.
//
// Both need the volume unpublished: librbd refuses to prepare a migration
// of an image a client has open, and a copy must not change under way.
// After the switch (migration prepared, or copy complete) the volume is
// usable at its new place while the rest (migration execute and commit,
// removal of the copy's source) finishes; a crash before the switch is
// undone, after it finished, by the retry or the recovery loop.

// Placement is what a volume's placement parameters ask for.
type Placement struct {
	Backend      string
	Capabilities map[string]string
}

func (pl Placement) empty() bool { return pl.Backend == "" && len(pl.Capabilities) == 0 }

// moveSnap is the snapshot a copy to another cluster reads from.
const moveSnap = "basalt-move"

// retype moves volumeID where pl asks, if its backend does not meet pl
// already. The caller holds the volume's lock. Idempotent.
func (p *Provisioner) retype(ctx context.Context, volumeID string, pl Placement) error {
	log := p.Log.With("volume", volumeID)
	reg, err := p.registry()
	if err != nil {
		return err
	}
	if err := p.settleMove(ctx, log, reg, volumeID); err != nil {
		return err
	}
	id, bname, info, err := p.Stat(ctx, volumeID)
	if err != nil {
		return err
	}
	cl, _, err := p.Backends.Get(bname)
	if err != nil {
		return errorf(Unavailable, err, "the backend of volume %s is down", volumeID)
	}
	sched := p.Backends.Scheduler()
	cur, _ := sched.Get(bname)
	sreq := scheduler.Request{Backend: pl.Backend, Capabilities: pl.Capabilities}
	if scheduler.Satisfies(cur, sreq) == "" {
		return nil // where it should be (or a retry after the move)
	}
	image := id.ImageName()
	if err := p.movable(ctx, reg, id, volumeID, cl); err != nil {
		return err
	}
	// A volume never leaves its zone: its PV's node affinity names it.
	sreq.SizeBytes = info.SizeBytes
	sreq.ImageClusters = map[string]bool{cl.ClusterID(): true} // prefer a live migration
	if cur.Zone != "" {
		sreq.Requisite = []map[string]string{{scheduler.TopologyKey: cur.Zone}}
	}
	cand, err := sched.Pick(sreq, nil)
	if err != nil {
		var nc *scheduler.NoCandidateError
		if errors.As(err, &nc) {
			metrics.Refused(nc.Filters())
		}
		switch {
		case nc != nil && nc.AnyDown():
			return errorf(Unavailable, nil, "cannot move volume %s: %v; retry when the backend is back", volumeID, err)
		case nc != nil && nc.Infeasible():
			return errorf(InvalidArgument, nil, "cannot move volume %s (on backend %s, zone %q) to meet %s: %v", volumeID, bname, cur.Zone, pl, err)
		}
		return errorf(ResourceExhausted, nil, "cannot move volume %s: %v", volumeID, err)
	}
	target := cand.Backend.Name
	metrics.Placed(target)
	charged := true
	uncharge := func(context.Context) error {
		if charged {
			sched.Abandon(target, info.SizeBytes)
			charged = false
		}
		return nil
	}
	tcl, _, err := p.Backends.Get(target)
	if err != nil {
		_ = uncharge(ctx)
		return errorf(Unavailable, err, "the backend chosen for volume %s is down; retry", volumeID)
	}
	m := records.Move{VolumeID: volumeID, State: records.MoveStarted, Method: records.MoveCopy, Owner: p.Instance}
	if m.From, err = locationOf(bname, cl); err == nil {
		m.To, err = locationOf(target, tcl)
	}
	if err != nil {
		_ = uncharge(ctx)
		return classify(err, "naming the move")
	}
	if m.From.FSID == m.To.FSID {
		m.Method = records.MoveMigrate
	}
	log = log.With("from", bname, "to", target, "method", m.Method)
	log.Info("moving the volume (retype)", "why", scheduler.Satisfies(cur, sreq))

	steps := []flow.Step{
		{Name: "account the move", Do: func(context.Context) error { return nil }, Undo: uncharge},
		{
			Name: "record the move",
			Do:   func(ctx context.Context) error { return reg.SaveMove(ctx, &m) },
			Undo: func(ctx context.Context) error { return p.forgetMove(ctx, reg, m) },
		},
	}
	if m.Method == records.MoveMigrate {
		steps = append(steps, flow.Step{
			Name: "prepare the migration",
			Do:   func(ctx context.Context) error { return cl.MigrateTo(ctx, image, p.poolOf(target)) },
			Undo: func(ctx context.Context) error { return abortMigration(ctx, cl, image) },
		})
	} else {
		meta := map[string]string{MetaDepth: "0"} // a copy is flat
		for k, v := range info.Metadata {
			if k != MetaDepth {
				meta[k] = v
			}
		}
		steps = append(steps, flow.Step{
			Name: "snapshot for the copy",
			Do: func(ctx context.Context) error {
				_, err := cl.CreateSnapshot(ctx, image, moveSnap, 0)
				return err
			},
			Undo: func(ctx context.Context) error { return cl.RemoveSnapshot(ctx, image, moveSnap) },
		}, flow.Step{
			Name: "copy the image",
			Do: func(ctx context.Context) error {
				spec := backend.ImageSpec{Pool: p.poolOf(bname), Image: image, Snap: moveSnap}
				if err := tcl.CopyFrom(ctx, cl, spec, image); err != nil {
					return err
				}
				return tcl.Finish(ctx, image, info.SizeBytes, meta)
			},
			Undo: func(ctx context.Context) error { return tcl.RemoveImage(ctx, image) },
		})
	}
	steps = append(steps, flow.Step{
		Name: "switch to the new place",
		Do: func(ctx context.Context) error {
			m.State = records.MoveSwitched
			return reg.SaveMove(ctx, &m)
		},
	})
	if err := flow.Run(ctx, log, steps...); err != nil {
		_ = uncharge(ctx)
		var fe *flow.Error
		if errors.As(err, &fe) && errors.Is(fe.Err, backend.ErrBusy) {
			return errorf(FailedPrecondition, err, "volume %s was opened by a client while it was being moved; unpublish it and retry", volumeID)
		}
		return classify(err, "moving volume "+volumeID)
	}
	// Switched: the volume is at its new place. Its bytes count there from
	// now on (the index says so once the move is done).
	sched.Settle(target, info.SizeBytes)
	sched.Release(bname, info.SizeBytes)
	return p.finishMove(ctx, log, reg, m)
}

func (pl Placement) String() string {
	var parts []string
	if pl.Backend != "" {
		parts = append(parts, "backend="+pl.Backend)
	}
	for _, k := range slices.Sorted(maps.Keys(pl.Capabilities)) {
		parts = append(parts, "capability."+k+"="+pl.Capabilities[k])
	}
	return strings.Join(parts, ", ")
}

// movable refuses what a move cannot carry: attachments (a published volume
// may be open on a node any time), snapshots (their IDs and clones are tied
// to the image where it is) and open clients.
func (p *Provisioner) movable(ctx context.Context, reg *records.Registry, id volumeid.ID, volumeID string, cl backend.Cluster) error {
	atts, err := reg.LoadAttachments(ctx, volumeID, id.UUID)
	if err != nil {
		return classify(err, "reading the attachments of "+volumeID)
	}
	if nodes := atts.Nodes(); len(nodes) > 0 {
		return errorf(FailedPrecondition, nil, "volume %s is published to node(s) %s: moving it to another backend (retype) needs it unpublished; stop its workload (Kubernetes retries the change)", volumeID, strings.Join(nodes, ", "))
	}
	snaps, err := cl.ListSnapshots(ctx, id.ImageName())
	if err != nil {
		return classify(err, "listing the snapshots of "+volumeID)
	}
	if len(snaps) > 0 {
		return errorf(FailedPrecondition, nil, "volume %s has %d snapshot(s) (CSI, group or awaiting a clone's removal): a volume with snapshots cannot move to another backend; delete them, or restore a snapshot into a new volume of the new class", volumeID, len(snaps))
	}
	u, err := cl.Usage(ctx, id.ImageName())
	if err != nil {
		return classify(err, "checking the users of "+volumeID)
	}
	if u.Watchers > 0 {
		return errorf(FailedPrecondition, nil, "volume %s is open by %d client(s) (a node still maps it, or a client died less than ~30 s ago): it cannot move while open; retry", volumeID, u.Watchers)
	}
	return nil
}

// settleMove deals with a move of volumeID that an earlier call left
// unfinished: undone before its switch, finished after it. A move another
// controller is making (recent progress) is left to it.
func (p *Provisioner) settleMove(ctx context.Context, log *slog.Logger, reg *records.Registry, volumeID string) error {
	m, err := reg.Move(ctx, volumeID)
	switch {
	case errors.Is(err, records.ErrNotFound):
		return nil
	case err != nil:
		return classify(err, "reading the move record of "+volumeID)
	case m.State == records.MoveDone:
		return nil
	case m.Owner != p.Instance && time.Since(m.Updated) < TakeoverGrace:
		return errorf(Aborted, nil, "volume %s is being moved by another controller (%s, last progress %s ago); retry", volumeID, m.Owner, time.Since(m.Updated).Round(time.Second))
	}
	log = log.With("from", m.From.Backend, "to", m.To.Backend, "method", m.Method, "state", m.State)
	if m.State == records.MoveStarted {
		log.Warn("undoing an interrupted move")
		return p.undoMove(ctx, reg, m)
	}
	log.Warn("finishing an interrupted move")
	return p.finishMove(ctx, log, reg, m)
}

// undoMove reverts a move that did not reach its switch: nobody used the
// target (Lookup refused the volume meanwhile), so it is dropped.
func (p *Provisioner) undoMove(ctx context.Context, reg *records.Registry, m records.Move) error {
	cl, tcl, image, err := p.moveEnds(m)
	if err != nil {
		return err
	}
	if m.Method == records.MoveMigrate {
		err = abortMigration(ctx, cl, image)
	} else if err = tcl.RemoveImage(ctx, image); err == nil {
		err = cl.RemoveSnapshot(ctx, image, moveSnap)
	}
	if err != nil {
		return classify(err, "undoing the move of "+m.VolumeID)
	}
	return classify(p.forgetMove(ctx, reg, m), "undoing the move of "+m.VolumeID)
}

// finishMove completes a switched move: the rest of the migration, or the
// removal of the copy's source; then the index and the record say where
// the volume is. Each step is idempotent, so a retry runs them all again.
func (p *Provisioner) finishMove(ctx context.Context, log *slog.Logger, reg *records.Registry, m records.Move) error {
	cl, tcl, image, err := p.moveEnds(m)
	if err != nil {
		return err
	}
	var steps []flow.Step
	if m.Method == records.MoveMigrate {
		steps = append(steps, flow.Step{
			Name: "execute the migration",
			Do: func(ctx context.Context) error {
				state, err := tcl.Migration(ctx, image)
				if err != nil || state == "" || state == backend.MigrationExecuted {
					return err // committed already, or only the commit is left
				}
				return tcl.MigrateExecute(ctx, image, p.dataTimeout())
			},
		}, flow.Step{
			Name: "commit the migration",
			Do: func(ctx context.Context) error {
				state, err := tcl.Migration(ctx, image)
				if err != nil || state == "" {
					return err
				}
				return tcl.MigrateCommit(ctx, image)
			},
		})
	} else {
		steps = append(steps, flow.Step{
			Name: "remove the source",
			Do: func(ctx context.Context) error {
				if err := cl.RemoveSnapshot(ctx, image, moveSnap); err != nil {
					return err
				}
				return cl.RemoveImage(ctx, image)
			},
		})
	}
	steps = append(steps, flow.Step{
		Name: "index the new place",
		Do: func(ctx context.Context) error {
			e, err := reg.Volume(ctx, m.VolumeID)
			if errors.Is(err, records.ErrNotFound) {
				return nil
			}
			if err != nil {
				return err
			}
			_, bcfg, _ := p.Backends.Get(m.To.Backend)
			e.Backend, e.Zone = m.To.Backend, bcfg.Zone
			return reg.IndexVolume(ctx, e)
		},
	}, flow.Step{
		Name: "mark the move done",
		Do: func(ctx context.Context) error {
			m.State = records.MoveDone
			return reg.SaveMove(ctx, &m)
		},
	})
	if err := flow.Run(ctx, log, steps...); err != nil {
		return classify(err, fmt.Sprintf("finishing the move of %s to backend %s (it is usable there; a retry finishes it)", m.VolumeID, m.To.Backend))
	}
	log.Info("volume moved (retype)", "volume", m.VolumeID, "backend", m.To.Backend)
	return nil
}

// forgetMove drops the record of an undone move, or points it back where
// the volume was, if that is not the pool its ID names (an earlier move).
func (p *Provisioner) forgetMove(ctx context.Context, reg *records.Registry, m records.Move) error {
	id, err := volumeid.Parse(m.VolumeID)
	if err != nil {
		return err
	}
	if id.FSID == m.From.FSID && id.PoolID == m.From.PoolID {
		return reg.DropMove(ctx, m.VolumeID)
	}
	back := m
	back.State, back.To = records.MoveDone, m.From
	return reg.SaveMove(ctx, &back)
}

// abortMigration returns a prepared migration to its source (through the
// source's backend, which waits for a prepare that timed out but still
// runs). Nothing to abort is success.
func abortMigration(ctx context.Context, src backend.Cluster, image string) error {
	state, err := src.Migration(ctx, image)
	if err != nil || state == "" {
		return err
	}
	return src.MigrateAbort(ctx, image)
}

// moveEnds returns the source and target backends of m and the image name.
func (p *Provisioner) moveEnds(m records.Move) (backend.Cluster, backend.Cluster, string, error) {
	id, err := volumeid.Parse(m.VolumeID)
	if err != nil {
		return nil, nil, "", errorf(Internal, err, "move record of %q", m.VolumeID)
	}
	cl, _, err := p.Backends.Get(m.From.Backend)
	if err != nil {
		return nil, nil, "", errorf(Unavailable, err, "the backend volume %s is moving from is down; retry", m.VolumeID)
	}
	tcl, _, err := p.Backends.Get(m.To.Backend)
	if err != nil {
		return nil, nil, "", errorf(Unavailable, err, "the backend volume %s is moving to is down; retry", m.VolumeID)
	}
	return cl, tcl, id.ImageName(), nil
}

func locationOf(bname string, cl backend.Cluster) (records.Location, error) {
	fsid, err := volumeid.NormalizeFSID(cl.ClusterID())
	return records.Location{Backend: bname, FSID: fsid, PoolID: cl.PoolID()}, err
}

func (p *Provisioner) poolOf(bname string) string {
	_, b, _ := p.Backends.Get(bname)
	return b.Pool
}

// dataTimeout bounds a call that copies a volume's data (a flatten, a
// migration's execute).
func (p *Provisioner) dataTimeout() time.Duration {
	return time.Duration(p.Backends.Config().FlattenTimeoutSeconds) * time.Second
}

// RecoverMoves settles interrupted moves (undone before their switch,
// finished after it): this instance's own at once (its previous
// incarnation is dead and fenced; a move this process runs holds the
// volume's lock and is skipped), others' once grace has passed.
func (p *Provisioner) RecoverMoves(ctx context.Context, grace time.Duration) error {
	reg, err := p.registry()
	if err != nil {
		return err
	}
	moves, err := records.AllPages(func(after string) ([]records.Move, string, error) { return reg.Moves(ctx, after, 1000) })
	if err != nil {
		return classify(err, "listing moves")
	}
	for _, m := range moves {
		if m.State == records.MoveDone || (m.Owner != p.Instance && time.Since(m.Updated) < grace) {
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		unlock, lerr := p.Locks.Lock(lctx, LockVolume(m.VolumeID))
		cancel()
		if lerr != nil {
			continue
		}
		if err := p.settleMove(ctx, p.Log.With("volume", m.VolumeID), reg, m.VolumeID); err != nil {
			p.Log.Error("could not settle an interrupted move; will retry", "volume", m.VolumeID, "error", err)
		} else {
			metrics.Recovered(metrics.RecoverySettleMove)
		}
		unlock()
	}
	return nil
}
