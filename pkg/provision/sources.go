package provision

import (
	"context"
	"errors"
	"maps"
	"strconv"
	"time"

	"github.com/basalt-csi/basalt/pkg/backend"
	"github.com/basalt-csi/basalt/pkg/flow"
	"github.com/basalt-csi/basalt/pkg/records"
	"github.com/basalt-csi/basalt/pkg/volumeid"
)

// origin is what a new volume starts from: a golden image, a CSI snapshot or
// a CSI volume. The scheduler treats all three alike: backends in a cluster
// that holds the origin clone it (and are preferred), others copy it.
type origin struct {
	spec     *backend.ImageSpec         // the RBD snapshot to clone or copy (nil: blank)
	clusters map[string]bool            // fsids holding it
	sources  map[string]backend.Cluster // a connection per such cluster
	size     uint64
	label    string // "pool/image@snap", "snapshot <id>" or "volume <id>"
	// volume is set for a clone of a volume: the clone goes through a
	// temporary snapshot of it, named after the new volume's UUID.
	volume *volumeSource
	// chained: a restore or a clone may deepen a clone chain past
	// maxCloneDepth; golden-image clones are depth 1 and never do.
	chained bool
	// depth is the origin's recorded clone depth: 0 unknown (the new
	// volume's is then measured), -1 flat, n > 0 n parents.
	depth int
	// altImage is where the origin's image is once its volume was deleted
	// (set aside for its snapshots): tried when spec.Image is not found.
	altImage string
	// golden: a golden image, which the image-volume cache may hold in
	// clusters other than its own (clusters then includes them); its
	// snapshot's fingerprint by fsid of the clusters holding it.
	golden       bool
	fingerprints map[string]string
}

// depthOf reads a volume's recorded clone depth as origin.depth counts it.
func depthOf(md map[string]string) int {
	d, err := strconv.Atoi(md[MetaDepth])
	switch {
	case err != nil || d < 0:
		return 0
	case d == 0:
		return -1
	}
	return d
}

type volumeSource struct {
	cl backend.Cluster
	id volumeid.ID
}

// sourceParam records the content source among the parameters that define
// a volume, so that the same name with another source is AlreadyExists.
const sourceParam = "basalt.dev/content-source"

func withSource(params map[string]string, cs ContentSource) map[string]string {
	out := maps.Clone(params)
	if out == nil {
		out = map[string]string{}
	}
	out[sourceParam] = cs.String()
	return out
}

// locate finds the backend of a volume (or of the volume a snapshot ID
// names): NotFound (with what) for an ID no backend serves, Unavailable when
// its backend is down. A volume that a retype moved is where its move
// record says; the record is one omap read in the registry.
func (p *Provisioner) locate(ctx context.Context, id volumeid.ID, what string) (string, backend.Cluster, error) {
	fsid, pool := id.FSID, id.PoolID
	reg, err := p.registry()
	if err != nil {
		return "", nil, err
	}
	m, err := reg.Move(ctx, id.String())
	switch {
	case errors.Is(err, records.ErrNotFound):
	case err != nil:
		return "", nil, errorf(Unavailable, err, "cannot read where %s is (its move record)", what)
	default:
		loc, ok := m.Current()
		if !ok {
			return "", nil, errorf(Unavailable, nil, "%s is being moved from backend %s to %s (a retype started %s); retry", what, m.From.Backend, m.To.Backend, m.Updated.Format(time.RFC3339))
		}
		fsid, pool = loc.FSID, loc.PoolID
	}
	name, cl, err := p.Backends.Locate(fsid, pool)
	switch {
	case errors.Is(err, backend.ErrNotFound):
		return "", nil, errorf(NotFound, nil, "%s does not exist: no configured backend serves its cluster and pool", what)
	case err != nil:
		return name, nil, errorf(Unavailable, err, "cannot reach the backend of %s", what)
	}
	return name, cl, nil
}

// deleteTarget finds the backend and registry a delete of what (on volume
// id's cluster and pool) works on. A nil cluster with a nil error means the
// ID names nothing this driver serves: the delete succeeds (idempotent).
func (p *Provisioner) deleteTarget(ctx context.Context, id volumeid.ID, what string) (string, backend.Cluster, *records.Registry, error) {
	bname, cl, err := p.locate(ctx, id, what)
	var pe *Error
	if errors.As(err, &pe) && pe.Kind == NotFound {
		p.Log.Info("delete of something unknown: nothing to do", "what", what, "reason", err)
		return "", nil, nil, nil
	}
	if err != nil {
		return "", nil, nil, err
	}
	reg, err := p.registry()
	return bname, cl, reg, err
}

// resolveSource finds a CSI snapshot or volume to start a volume from.
func (p *Provisioner) resolveSource(ctx context.Context, reg *records.Registry, cs ContentSource) (origin, error) {
	if cs.SnapshotID != "" {
		return p.snapshotOrigin(ctx, reg, cs.SnapshotID)
	}
	id, bname, cl, err := p.Lookup(ctx, cs.VolumeID)
	if err != nil {
		return origin{}, err
	}
	info, err := cl.StatImage(ctx, id.ImageName())
	if errors.Is(err, backend.ErrNotFound) {
		return origin{}, errorf(NotFound, nil, "source volume %s does not exist", cs.VolumeID)
	}
	if err != nil {
		return origin{}, classify(err, "inspecting source volume "+cs.VolumeID)
	}
	_, bcfg, _ := p.Backends.Get(bname)
	return origin{
		spec:     &backend.ImageSpec{Pool: bcfg.Pool, Image: id.ImageName()},
		clusters: map[string]bool{cl.ClusterID(): true},
		sources:  map[string]backend.Cluster{cl.ClusterID(): cl},
		size:     info.SizeBytes,
		label:    cs.String(),
		volume:   &volumeSource{cl: cl, id: id},
		chained:  true,
		depth:    depthOf(info.Metadata),
	}, nil
}

func (p *Provisioner) snapshotOrigin(ctx context.Context, reg *records.Registry, snapshotID string) (origin, error) {
	sid, err := volumeid.ParseSnapshot(snapshotID)
	if err != nil {
		return origin{}, errorf(NotFound, err, "snapshot %q does not exist", snapshotID)
	}
	entry, err := reg.Snapshot(ctx, snapshotID)
	if errors.Is(err, records.ErrNotFound) {
		return origin{}, errorf(NotFound, nil, "snapshot %s does not exist", snapshotID)
	}
	if err != nil {
		return origin{}, classify(err, "reading the snapshot index")
	}
	bname, cl, err := p.locate(ctx, sid.Volume, "the volume of snapshot "+snapshotID)
	if err != nil {
		return origin{}, err
	}
	image := sid.Volume.ImageName()
	_, bcfg, _ := p.Backends.Get(bname)
	if entry.GroupSnapshotID != "" {
		// A group snapshot's member has only an ID, and Pacific's librbd
		// clones by snapshot name: its restores are sparse copies.
		gid, _ := volumeid.ParseGroupSnapshot(entry.GroupSnapshotID)
		return origin{
			spec:     &backend.ImageSpec{Pool: bcfg.Pool, Image: image, GroupSnap: gid.GroupName() + "@" + volumeid.GroupSnapName},
			sources:  map[string]backend.Cluster{cl.ClusterID(): cl},
			size:     entry.SizeBytes,
			label:    "snapshot " + snapshotID,
			altImage: sid.Volume.DeletedImageName(),
		}, nil
	}
	return origin{
		spec:     &backend.ImageSpec{Pool: bcfg.Pool, Image: image, Snap: sid.SnapName()},
		clusters: map[string]bool{cl.ClusterID(): true},
		sources:  map[string]backend.Cluster{cl.ClusterID(): cl},
		size:     entry.SizeBytes,
		label:    "snapshot " + snapshotID,
		chained:  true,
		depth:    entry.Depth,
		altImage: sid.Volume.DeletedImageName(),
	}, nil
}

// around wraps the step that clones or copies the origin: a volume origin
// is snapshotted first and the temporary snapshot dropped right after (with
// format-2 clones it then waits in Ceph's snapshot trash for the clone).
func (o origin) around(makeImage flow.Step, spec backend.ImageSpec) []flow.Step {
	if o.volume == nil {
		return []flow.Step{makeImage}
	}
	v := o.volume
	// The source may be deleted meanwhile (its image then renamed, since
	// this snapshot keeps it): drop the snapshot under either name.
	drop := func(ctx context.Context) error {
		for _, image := range []string{v.id.ImageName(), v.id.DeletedImageName()} {
			if err := v.cl.RemoveSnapshot(ctx, image, spec.Snap); err != nil {
				return err
			}
		}
		return nil
	}
	return []flow.Step{
		{
			Name: "snapshot the source volume",
			Do: func(ctx context.Context) error {
				_, err := v.cl.CreateSnapshot(ctx, v.id.ImageName(), spec.Snap, 0)
				return err
			},
			Undo: drop,
		},
		makeImage,
		{Name: "drop the temporary snapshot", Do: drop},
	}
}

// flattenStep queues the new volume for a background flatten when its clone
// chain is deeper than maxCloneDepth (Cinder's rbd_max_clone_depth). The
// create does not wait for the flatten.
func (p *Provisioner) flattenStep(reg *records.Registry, cl backend.Cluster, o origin, meta map[string]string, bname, image, volumeID string) flow.Step {
	return flow.Step{
		Name: "check the clone depth",
		Do: func(ctx context.Context) error {
			if !o.chained || !local(meta) {
				return nil
			}
			// The recorded depth saves opening every image up the chain;
			// volumes from before it was recorded are measured.
			depth, err := strconv.Atoi(meta[MetaDepth])
			if err != nil {
				if depth, err = cl.CloneDepth(ctx, image); err != nil {
					return err
				}
				meta[MetaDepth] = strconv.Itoa(depth) // recorded by the next step
			}
			if limit := p.Backends.Config().MaxCloneDepth; depth > limit {
				p.Log.Info("clone chain deeper than maxCloneDepth: flattening in the background", "volume", volumeID, "depth", depth, "maxCloneDepth", limit)
				if err := reg.QueueFlatten(ctx, volumeID, bname); err != nil {
					return err
				}
				// The flattener is woken once the create is done.
			}
			return nil
		},
		Undo: func(ctx context.Context) error { return reg.FlattenDone(ctx, volumeID) },
	}
}

// local reports whether a new volume's metadata says it is a clone.
func local(meta map[string]string) bool { return meta[MetaSourceMethod] == "clone" }
