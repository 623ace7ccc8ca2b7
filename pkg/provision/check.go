package provision

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/basalt-csi/basalt/pkg/backend"
	"github.com/basalt-csi/basalt/pkg/records"
	"github.com/basalt-csi/basalt/pkg/volumeid"
)

// Finding is one thing in Ceph or the records that nothing accounts for.
type Finding struct {
	Backend  string `json:"backend,omitempty"`
	Kind     string `json:"kind"`   // orphan-image, orphan-cache-image, ghost-volume, orphan-snapshot, ghost-snapshot, stale-create
	Object   string `json:"object"` // image, volume ID, snapshot ID or name
	Detail   string `json:"detail"`
	Repaired bool   `json:"repaired"`
}

// Check is the invariant the tests check, for operators: every Basalt image
// is a live volume, a create in progress, or a deleted volume kept for its
// snapshots; every Basalt RBD snapshot is an indexed snapshot or one being
// taken; every indexed volume and snapshot exists in Ceph; no create was
// left half-done. With repair, what can be is undone (an orphan image with
// snapshots or users is only reported). Backends that are down are skipped.
func (p *Provisioner) Check(ctx context.Context, repair bool, grace time.Duration) ([]Finding, error) {
	reg, err := p.registry()
	if err != nil {
		return nil, err
	}
	known := map[string]bool{} // volume IDs: indexed, in progress or kept for snapshots
	vols, err := records.AllPages(func(after string) ([]records.VolumeEntry, string, error) { return reg.Volumes(ctx, after, 1000) })
	if err != nil {
		return nil, classify(err, "listing volumes")
	}
	for _, v := range vols {
		known[v.VolumeID] = true
	}
	deleted, err := reg.Deleted(ctx, 10000)
	if err != nil {
		return nil, classify(err, "listing deleted volumes")
	}
	for _, kv := range deleted {
		known[kv.Key] = true
	}
	alias, moving, err := moveAliases(ctx, reg)
	if err != nil {
		return nil, err
	}
	var out []Finding
	creates, err := unfinished(ctx, reg, records.KindVolume)
	if err != nil {
		return nil, err
	}
	inProgress := uuidsOf(creates)
	for _, res := range creates {
		if time.Since(res.Updated) > grace {
			out = append(out, Finding{Backend: res.Backend, Kind: "stale-create", Object: res.Name, Detail: "create interrupted since " + res.Updated.Format(time.RFC3339)})
		}
	}

	snaps, err := records.AllPages(func(after string) ([]records.SnapshotEntry, string, error) {
		return reg.Snapshots(ctx, "", after, 1000)
	})
	if err != nil {
		return nil, classify(err, "listing snapshots")
	}
	indexedSnaps := map[string]bool{}
	for _, e := range snaps {
		indexedSnaps[e.SnapshotID] = true
	}
	snapCreates, err := unfinished(ctx, reg, records.KindSnapshot)
	if err != nil {
		return nil, err
	}
	snapsInProgress := uuidsOf(snapCreates)

	for _, bname := range p.Backends.Up() {
		cl, _, err := p.Backends.Get(bname)
		if err != nil {
			continue
		}
		fsid, err := volumeid.NormalizeFSID(cl.ClusterID())
		if err != nil {
			continue
		}
		images, err := cl.ListImages(ctx)
		if err != nil {
			return out, classify(err, "listing the images of backend "+bname)
		}
		rbdSnaps := map[string]bool{} // image@snap of every Basalt image
		for _, img := range images {
			if strings.HasPrefix(img, volumeid.CachePrefix) {
				if f, ok := p.checkCacheImage(ctx, reg, cl, bname, img, repair); ok {
					out = append(out, f)
				}
				continue
			}
			uuid, deletedImg := strings.CutPrefix(img, volumeid.DeletedPrefix)
			if !deletedImg {
				var ok bool
				if uuid, ok = strings.CutPrefix(img, volumeid.ImagePrefix); !ok {
					continue
				}
			}
			id := volumeid.ID{FSID: fsid, PoolID: cl.PoolID(), UUID: uuid}
			if real, ok := alias[id.String()]; ok {
				id = real // a moved volume: its ID names the pool it was created in
			}
			names, err := cl.ListSnapshots(ctx, img)
			if err != nil && !errors.Is(err, backend.ErrNotFound) {
				return out, classify(err, "listing the snapshots of "+img)
			}
			for _, snap := range names {
				rbdSnaps[img+"@"+snap] = true
				f, ok := orphanSnapshot(id, img, snap, indexedSnaps, snapsInProgress, inProgress)
				if ok && p.stillOrphan(ctx, reg, id, snap) {
					if repair {
						err := cl.RemoveSnapshot(ctx, img, snap)
						f.Repaired = err == nil
						if err != nil {
							f.Detail += "; not removed: " + err.Error()
						}
					}
					f.Backend = bname
					out = append(out, f)
				}
			}
			if known[id.String()] || (!deletedImg && inProgress[uuid]) {
				continue
			}
			f := Finding{Backend: bname, Kind: "orphan-image", Object: img, Detail: "no volume, create in progress or snapshot accounts for it"}
			if repair {
				err := cl.RemoveImage(ctx, img)
				f.Repaired = err == nil
				if err != nil {
					f.Detail += "; not removed: " + err.Error()
				}
			}
			out = append(out, f)
		}
		for _, v := range vols {
			if v.Backend != bname {
				continue
			}
			id, err := volumeid.Parse(v.VolumeID)
			if err != nil || moving[v.VolumeID] {
				continue
			}
			if _, err := cl.StatImage(ctx, id.ImageName()); !errors.Is(err, backend.ErrNotFound) {
				continue
			}
			f := Finding{Backend: bname, Kind: "ghost-volume", Object: v.VolumeID, Detail: "indexed, but its image " + id.ImageName() + " does not exist"}
			if repair {
				f.Repaired = reg.UnindexVolume(ctx, v.VolumeID) == nil
			}
			out = append(out, f)
		}
		for _, e := range snaps {
			sid, err := volumeid.ParseSnapshot(e.SnapshotID)
			if err != nil || e.Backend != bname || e.GroupSnapshotID != "" {
				continue // group members live in the group's namespace, not listed
			}
			if rbdSnaps[sid.Volume.ImageName()+"@"+sid.SnapName()] || rbdSnaps[sid.Volume.DeletedImageName()+"@"+sid.SnapName()] {
				continue
			}
			// Look again, now: a delete may have renamed the image since
			// the listing (its snapshots go with it).
			if exists, err := rbdSnapshotExists(ctx, cl, sid); exists || err != nil {
				continue
			}
			f := Finding{Backend: bname, Kind: "ghost-snapshot", Object: e.SnapshotID, Detail: "indexed, but its RBD snapshot " + sid.SnapName() + " does not exist"}
			if repair {
				f.Repaired = reg.Release(ctx, records.KindSnapshot, e.Name, sid.UUID) == nil && reg.UnindexSnapshot(ctx, e.SnapshotID) == nil
			}
			out = append(out, f)
		}
	}
	if repair {
		if _, err := p.Recover(ctx, grace); err != nil {
			return out, err
		}
		for i := range out {
			if out[i].Kind == "stale-create" {
				_, err := reg.Reservation(ctx, records.KindVolume, out[i].Object)
				out[i].Repaired = errors.Is(err, records.ErrNotFound)
			}
		}
	}
	return out, nil
}

// moveAliases maps the ID an image of a moved volume would have by its pool
// to the volume's own ID, and lists the volumes whose move is not done.
// While a move runs, both of its images belong to it.
func moveAliases(ctx context.Context, reg *records.Registry) (map[string]volumeid.ID, map[string]bool, error) {
	moves, err := records.AllPages(func(after string) ([]records.Move, string, error) { return reg.Moves(ctx, after, 1000) })
	if err != nil {
		return nil, nil, classify(err, "listing moved volumes")
	}
	alias, moving := map[string]volumeid.ID{}, map[string]bool{}
	for _, m := range moves {
		real, err := volumeid.Parse(m.VolumeID)
		if err != nil {
			continue
		}
		locs := []records.Location{m.To}
		if m.State != records.MoveDone {
			locs = append(locs, m.From)
			moving[m.VolumeID] = true
		}
		for _, l := range locs {
			alias[volumeid.ID{FSID: l.FSID, PoolID: l.PoolID, UUID: real.UUID}.String()] = real
		}
	}
	return alias, moving, nil
}

// orphanSnapshot tells whether image@snap (of volume id) is a Basalt
// snapshot nothing accounts for: a CSI snapshot neither indexed nor being
// created, or a volume clone's temporary snapshot whose create has ended.
func orphanSnapshot(id volumeid.ID, image, snap string, indexed, snapsInProgress, volsInProgress map[string]bool) (Finding, bool) {
	if u, ok := strings.CutPrefix(snap, volumeid.SnapPrefix); ok {
		sid := volumeid.SnapshotID{Volume: id, UUID: u}
		if indexed[sid.String()] || snapsInProgress[u] {
			return Finding{}, false
		}
		return Finding{Kind: "orphan-snapshot", Object: image + "@" + snap, Detail: "no snapshot index entry or create in progress accounts for it"}, true
	}
	if u, ok := strings.CutPrefix(snap, volumeid.ClonePrefix); ok && !volsInProgress[u] {
		return Finding{Kind: "orphan-snapshot", Object: image + "@" + snap, Detail: "the temporary snapshot of a volume clone that is no longer being created"}, true
	}
	return Finding{}, false
}

// unfinished returns the reservations of kind k whose create has not
// finished (in progress, or interrupted).
func unfinished(ctx context.Context, reg *records.Registry, k records.Kind) ([]records.Reservation, error) {
	pending, err := reg.Pending(ctx, k, 10000)
	if err != nil {
		return nil, classify(err, "listing pending creates")
	}
	var out []records.Reservation
	for _, name := range pending {
		if res, err := reg.Reservation(ctx, k, name); err == nil && res.State != records.StateReady {
			out = append(out, res)
		}
	}
	return out, nil
}

func uuidsOf(rs []records.Reservation) map[string]bool {
	out := map[string]bool{}
	for _, r := range rs {
		out[r.UUID] = true
	}
	return out
}

// stillOrphan reads the records again just before an orphan snapshot is
// reported: a snapshot (or volume clone) create that began after the first
// reading reserves its name before it takes the RBD snapshot.
func (p *Provisioner) stillOrphan(ctx context.Context, reg *records.Registry, id volumeid.ID, snap string) bool {
	if u, ok := strings.CutPrefix(snap, volumeid.SnapPrefix); ok {
		sid := volumeid.SnapshotID{Volume: id, UUID: u}
		if _, err := reg.Snapshot(ctx, sid.String()); !errors.Is(err, records.ErrNotFound) {
			return false // indexed now, or cannot tell
		}
		now, err := unfinished(ctx, reg, records.KindSnapshot)
		return err == nil && !uuidsOf(now)[u]
	}
	u := strings.TrimPrefix(snap, volumeid.ClonePrefix)
	now, err := unfinished(ctx, reg, records.KindVolume)
	return err == nil && !uuidsOf(now)[u]
}

// rbdSnapshotExists looks for sid's RBD snapshot on its volume's image under
// both of its names (live, or set aside for its snapshots).
func rbdSnapshotExists(ctx context.Context, cl backend.Cluster, sid volumeid.SnapshotID) (bool, error) {
	for _, img := range []string{sid.Volume.ImageName(), sid.Volume.DeletedImageName()} {
		names, err := cl.ListSnapshots(ctx, img)
		if errors.Is(err, backend.ErrNotFound) {
			continue
		}
		if err != nil {
			return false, err
		}
		for _, n := range names {
			if n == sid.SnapName() {
				return true, nil
			}
		}
	}
	return false, nil
}
