package provision

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/basalt-csi/basalt/pkg/backend"
	"github.com/basalt-csi/basalt/pkg/failpoint"
	"github.com/basalt-csi/basalt/pkg/flow"
	"github.com/basalt-csi/basalt/pkg/records"
	"github.com/basalt-csi/basalt/pkg/volumeid"
)

// GroupRequest is a validated CreateVolumeGroupSnapshot.
type GroupRequest struct {
	Name      string
	VolumeIDs []string
	Params    map[string]string
}

// Group is a group snapshot with its members.
type Group struct {
	Entry   records.GroupEntry
	Members []records.SnapshotEntry
}

// CreateGroupSnapshot takes one RBD group snapshot of every volume: the
// member snapshots are one point in time across the volumes (not a loop of
// single snapshots). Members must be in one Ceph cluster, in any of its
// backends' pools: the RBD group lives in the first volume's pool.
// Idempotent by name, like CreateSnapshot.
func (p *Provisioner) CreateGroupSnapshot(ctx context.Context, req GroupRequest) (Group, error) {
	log := p.Log.With("groupSnapshotName", req.Name)
	reg, err := p.registry()
	if err != nil {
		return Group{}, err
	}
	vols := slices.Clone(req.VolumeIDs)
	slices.Sort(vols)
	vols = slices.Compact(vols)
	ids := make([]volumeid.ID, len(vols))
	bnames := make([]string, len(vols))
	images := make([]backend.ImageSpec, len(vols))
	var cl backend.Cluster
	for i, v := range vols {
		id, name, _, err := p.Lookup(ctx, v) // where it is now: a retype may have moved it
		if err != nil {
			return Group{}, err
		}
		vcl, bcfg, err := p.Backends.Get(name)
		if err != nil {
			return Group{}, errorf(Unavailable, err, "backend %s of volume %s is down", name, v)
		}
		if i == 0 {
			cl = vcl
		} else if vcl.ClusterID() != cl.ClusterID() {
			return Group{}, errorf(InvalidArgument, nil, "volumes %s (backend %s) and %s (backend %s) cannot be snapshotted together: an RBD group snapshot covers the images of one Ceph cluster", vols[0], bnames[0], v, name)
		}
		ids[i], bnames[i] = id, name
		images[i] = backend.ImageSpec{Pool: bcfg.Pool, Image: id.ImageName()}
	}
	bname := bnames[0] // the group's
	res, created, err := reserve(ctx, reg, records.Reservation{
		Kind: records.KindGroup, Name: req.Name, State: records.StateCreating,
		Source: strings.Join(vols, ","), Params: req.Params, Backend: bname,
	})
	if err != nil {
		return Group{}, classify(err, "reserving the group snapshot name")
	}
	if !created {
		if res.Source != strings.Join(vols, ",") || (!maps.Equal(res.Params, req.Params) && len(res.Params)+len(req.Params) > 0) {
			return Group{}, errorf(AlreadyExists, nil, "group snapshot name %q is already used for other volumes or parameters (%s)", req.Name, res.Source)
		}
		if res.State == records.StateReady {
			if g, err := p.groupOf(ctx, reg, res.VolumeID); err == nil {
				return g, nil
			}
		}
		log.Info("resuming an interrupted group snapshot", "uuid", res.UUID)
	}

	gid, err := groupIDOn(cl, res.UUID)
	if err != nil {
		return Group{}, classify(err, "naming the group snapshot")
	}
	g := Group{Entry: records.GroupEntry{GroupSnapshotID: gid.String(), Name: req.Name, Backend: bname}}
	err = flow.Run(ctx, log.With("groupSnapshot", gid.String()),
		flow.Step{
			Name: "take the group snapshot",
			Do: func(ctx context.Context) error {
				sizes, err := cl.GroupSnapshot(ctx, gid.GroupName(), images, volumeid.GroupSnapName)
				if err != nil {
					return err
				}
				g.Entry.Created = time.Now().UTC()
				g.Members, g.Entry.SnapshotIDs = nil, nil
				for i, id := range ids {
					sid := volumeid.SnapshotID{Volume: id, UUID: res.UUID}.String()
					g.Members = append(g.Members, records.SnapshotEntry{
						SnapshotID: sid, Name: req.Name + "/" + vols[i], SourceVolumeID: vols[i], Backend: bnames[i],
						SizeBytes: sizes[images[i].Pool+"/"+images[i].Image], Created: g.Entry.Created, GroupSnapshotID: gid.String(),
					})
					g.Entry.SnapshotIDs = append(g.Entry.SnapshotIDs, sid)
				}
				return nil
			},
			Undo: func(ctx context.Context) error {
				return cl.RemoveGroupSnapshot(ctx, gid.GroupName(), volumeid.GroupSnapName)
			},
		},
		flow.Step{
			Name: "index the member snapshots",
			Do: func(ctx context.Context) error {
				for _, m := range g.Members {
					if err := reg.IndexSnapshot(ctx, m); err != nil {
						return err
					}
				}
				return nil
			},
			Undo: func(ctx context.Context) error { return unindexMembers(ctx, reg, g.Entry.SnapshotIDs) },
		},
		flow.Step{
			Name: "index the group snapshot",
			Do:   func(ctx context.Context) error { return reg.IndexGroup(ctx, g.Entry) },
			Undo: func(ctx context.Context) error { return reg.UnindexGroup(ctx, gid.String()) },
		},
		flow.Step{
			Name: "mark ready",
			Do: func(ctx context.Context) error {
				res.State, res.VolumeID = records.StateReady, gid.String()
				return reg.Save(ctx, &res)
			},
		},
	)
	if err != nil {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), flow.UndoTimeout)
		if rerr := reg.Release(uctx, records.KindGroup, req.Name, res.UUID); rerr != nil {
			log.Error("could not release the group snapshot name reservation", "error", rerr)
		}
		cancel()
		return Group{}, classify(err, "taking the group snapshot")
	}
	log.Info("group snapshot created", "groupSnapshot", gid.String(), "volumes", len(vols))
	return g, nil
}

func unindexMembers(ctx context.Context, reg *records.Registry, ids []string) error {
	for _, id := range ids {
		if err := reg.UnindexSnapshot(ctx, id); err != nil {
			return err
		}
	}
	return nil
}

// groupOf loads a group snapshot and its members from the indexes.
func (p *Provisioner) groupOf(ctx context.Context, reg *records.Registry, id string) (Group, error) {
	e, err := reg.Group(ctx, id)
	if err != nil {
		return Group{}, err
	}
	g := Group{Entry: e}
	for _, sid := range e.SnapshotIDs {
		m, err := reg.Snapshot(ctx, sid)
		if err != nil {
			return Group{}, err
		}
		g.Members = append(g.Members, m)
	}
	return g, nil
}

// GroupSnapshot is GetVolumeGroupSnapshot. snapshotIDs, when given, must
// be the group's members (InvalidArgument otherwise).
func (p *Provisioner) GroupSnapshot(ctx context.Context, id string, snapshotIDs []string) (Group, error) {
	if _, err := volumeid.ParseGroupSnapshot(id); err != nil {
		return Group{}, errorf(NotFound, err, "group snapshot %q does not exist", id)
	}
	reg, err := p.registry()
	if err != nil {
		return Group{}, err
	}
	g, err := p.groupOf(ctx, reg, id)
	if errors.Is(err, records.ErrNotFound) {
		return Group{}, errorf(NotFound, nil, "group snapshot %s does not exist", id)
	}
	if err != nil {
		return Group{}, classify(err, "reading group snapshot "+id)
	}
	return g, sameMembers(g.Entry, snapshotIDs)
}

func sameMembers(e records.GroupEntry, snapshotIDs []string) error {
	if len(snapshotIDs) == 0 {
		return nil
	}
	want, got := slices.Clone(e.SnapshotIDs), slices.Clone(snapshotIDs)
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(want, slices.Compact(got)) {
		return errorf(InvalidArgument, nil, "snapshot_ids %v are not the members of group snapshot %s (%v)", snapshotIDs, e.GroupSnapshotID, e.SnapshotIDs)
	}
	return nil
}

// DeleteGroupSnapshot removes the group snapshot with all its members;
// volumes restored from them keep their data (they are copies). Idempotent.
func (p *Provisioner) DeleteGroupSnapshot(ctx context.Context, id string, snapshotIDs []string) error {
	gid, err := volumeid.ParseGroupSnapshot(id)
	if err != nil {
		return nil
	}
	bname, cl, reg, err := p.deleteTarget(ctx, volumeid.ID(gid), "group snapshot "+id)
	if cl == nil || err != nil {
		return err
	}
	e, ierr := reg.Group(ctx, id)
	if ierr != nil && !errors.Is(ierr, records.ErrNotFound) {
		return classify(ierr, "reading group snapshot "+id)
	}
	if ierr == nil {
		if err := sameMembers(e, snapshotIDs); err != nil {
			return err
		}
	}
	if err := cl.RemoveGroupSnapshot(ctx, gid.GroupName(), volumeid.GroupSnapName); err != nil {
		return classify(err, "removing group snapshot "+id)
	}
	if err := failpoint.Hit("delete-group/after-remove"); err != nil {
		return classify(err, "deleting "+id)
	}
	// Name first, group entry last: until it goes, a retry finds everything
	// it needs to finish (as DeleteSnapshot).
	if ierr == nil {
		// Each member's backend, for the images of deleted volumes that
		// waited for this snapshot (members may be in other pools).
		memberBackend := map[string]string{}
		for _, sid := range e.SnapshotIDs {
			if m, err := reg.Snapshot(ctx, sid); err == nil && m.Backend != "" {
				memberBackend[sid] = m.Backend
			}
		}
		if err := reg.Release(ctx, records.KindGroup, e.Name, gid.UUID); err != nil {
			return classify(err, "releasing the group snapshot name")
		}
		if err := unindexMembers(ctx, reg, e.SnapshotIDs); err != nil {
			return classify(err, "unindexing the member snapshots")
		}
		if err := failpoint.Hit("delete-group/after-unindex-members"); err != nil {
			return classify(err, "deleting "+id)
		}
		if err := reg.UnindexGroup(ctx, id); err != nil {
			return classify(err, "unindexing the group snapshot")
		}
		for _, sid := range e.SnapshotIDs {
			s, err := volumeid.ParseSnapshot(sid)
			if err != nil {
				continue
			}
			mname, mcl := bname, cl
			if b, ok := memberBackend[sid]; ok && b != bname {
				if c, _, err := p.Backends.Get(b); err == nil {
					mname, mcl = b, c
				}
			}
			p.reapDeleted(ctx, reg, mcl, mname, s.Volume.DeletedImageName(), s.Volume.String())
		}
	}
	p.kickSweeper()
	p.Log.Info("group snapshot deleted", "groupSnapshot", id)
	return nil
}

// groupIDOn names the group snapshot uuid whose RBD group is in cl's pool:
// where the member images are now, which is not the pool their IDs name
// once a retype moved them.
func groupIDOn(cl backend.Cluster, uuid string) (volumeid.GroupSnapshotID, error) {
	fsid, err := volumeid.NormalizeFSID(cl.ClusterID())
	return volumeid.GroupSnapshotID{FSID: fsid, PoolID: cl.PoolID(), UUID: uuid}, err
}
