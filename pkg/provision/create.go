package provision

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/basalt-csi/basalt/pkg/backend"
	"github.com/basalt-csi/basalt/pkg/flow"
	"github.com/basalt-csi/basalt/pkg/locks"
	"github.com/basalt-csi/basalt/pkg/metrics"
	"github.com/basalt-csi/basalt/pkg/records"
	"github.com/basalt-csi/basalt/pkg/scheduler"
	"github.com/basalt-csi/basalt/pkg/volumeid"
)

// Image metadata keys Basalt writes on every volume.
const (
	MetaName         = "basalt.name"
	MetaSource       = "basalt.source"
	MetaSourceFSID   = "basalt.source-fsid"
	MetaSourceMethod = "basalt.source-method" // clone, copy or blank
	MetaPVCName      = "basalt.pvc-name"
	MetaPVCNamespace = "basalt.pvc-namespace"
	MetaPVName       = "basalt.pv-name"
	// MetaDepth is the volume's clone depth (1 for a golden-image clone),
	// written at create and reset by a flatten, so that a restore or clone
	// knows how deep it lands without opening every image up the chain.
	MetaDepth = "basalt.depth"
	// MetaCache names the image-cache image (pool/image) a volume was
	// cloned from, when its golden image is in another cluster.
	MetaCache = "basalt.cache-image"
)

// Request is a validated CreateVolume.
type Request struct {
	Name          string
	RequiredBytes uint64 // 0 = no minimum
	LimitBytes    uint64 // 0 = no maximum
	Image         *backend.ImageSpec
	// Params are the parameters that define the volume; a retry with other
	// values under the same name is AlreadyExists.
	Params   map[string]string
	Metadata map[string]string // extra image metadata (PVC name, ...)
	Sched    scheduler.Request // placement constraints; size and image are filled in here
	// Source is a snapshot or volume to start from (CSI volume_content_source);
	// Image and Source are exclusive.
	Source *ContentSource
}

// ContentSource names a CSI snapshot or volume a new volume starts from.
type ContentSource struct {
	SnapshotID string
	VolumeID   string
}

func (s ContentSource) String() string {
	if s.SnapshotID != "" {
		return "snapshot " + s.SnapshotID
	}
	return "volume " + s.VolumeID
}

// sourceName names what the volume starts from, for messages.
func (r Request) sourceName() string {
	switch {
	case r.Source != nil:
		return r.Source.String()
	case r.Image != nil:
		return "image " + r.Image.String()
	}
	return "(none)"
}

// Volume is what was created.
type Volume struct {
	ID        volumeid.ID
	Backend   string
	Zone      string
	SizeBytes uint64
	Source    string
}

// Provisioner runs the flows.
type Provisioner struct {
	Backends *backend.Manager
	Attempts int
	Log      *slog.Logger
	// Locks serialises work per name and per volume inside the process;
	// shared with the gRPC layer, which takes them.
	Locks *locks.Keyed

	// Instance identifies this controller (its --instance-id, stable across
	// its restarts) in the reservations it makes: a create that another
	// controller started is not resumed under its feet while it may still
	// run; one this instance's previous incarnation started is (that
	// incarnation is dead: FencePrevious blocklisted it).
	Instance string

	images imageLookups
	flat   flattener

	fillsMu sync.Mutex
	fills   map[string]*fill // image-cache fills running, by fsid/key
	// image-cache hits not yet recorded, flushed by one goroutine at a time
	hitsMu      sync.Mutex
	hits        map[string]*pendingHits
	hitFlushing bool
}

// TakeoverGrace is how long a reservation another controller is working on
// (its last record update) is left to it before a retry takes it over.
var TakeoverGrace = 2 * time.Minute

const (
	mib          = 1 << 20
	defaultBlank = 1 << 30
)

// RoundUp rounds n up to whole MiB, RBD's granularity here.
func RoundUp(n uint64) uint64 { return (n + mib - 1) / mib * mib }

func (p *Provisioner) registry() (*records.Registry, error) {
	reg, err := p.Backends.Registry()
	if err != nil {
		return nil, errorf(Unavailable, err, "the registry backend %q, which holds volume name reservations, is unreachable", p.Backends.Config().RegistryBackend)
	}
	return records.NewRegistry(reg), nil
}

// Create is CreateVolume. It is idempotent by name.
func (p *Provisioner) Create(ctx context.Context, req Request) (Volume, error) {
	log := p.Log.With("name", req.Name)
	reg, err := p.registry()
	if err != nil {
		return Volume{}, err
	}

	// Find the golden image, snapshot or volume to start from before sizing:
	// its size is the default size and the minimum.
	var o origin
	switch {
	case req.Image != nil:
		if o, err = p.findImage(ctx, *req.Image); err == nil {
			p.addCachedClusters(ctx, reg, &o)
		}
	case req.Source != nil:
		o, err = p.resolveSource(ctx, reg, *req.Source)
		req.Params = withSource(req.Params, *req.Source)
	}
	if err != nil {
		return Volume{}, err
	}
	size, err := chooseSize(req, o.size)
	if err != nil {
		return Volume{}, err
	}

	// Step: reserve the name. Compare with an existing reservation first.
	fresh := records.Reservation{Name: req.Name, State: records.StateCreating, SizeBytes: size, Params: req.Params, Owner: p.Instance}
	res, created, err := reserve(ctx, reg, fresh)
	if err != nil {
		return Volume{}, classify(err, "reserving the volume name")
	}
	if !created {
		if err := compatible(res, req); err != nil {
			return Volume{}, err
		}
		if res.State == records.StateReady {
			v, ok, err := p.existing(ctx, res)
			if err != nil {
				return Volume{}, err
			}
			if ok {
				log.Info("volume already exists for this name", "volume", res.VolumeID)
				return v, nil
			}
		}
		if res.State != records.StateReady && res.Owner != p.Instance && time.Since(res.Updated) < TakeoverGrace {
			return Volume{}, errorf(Aborted, nil, "volume name %q is being created by another controller (%s, last progress %s ago); retry", req.Name, res.Owner, time.Since(res.Updated).Round(time.Second))
		}
		log.Info("resuming an interrupted create", "uuid", res.UUID, "backend", res.Backend, "owner", res.Owner)
		size = res.SizeBytes
		if err := p.discardPartial(ctx, reg, &res); err != nil {
			return Volume{}, err
		}
		if res.Owner != p.Instance {
			// Taking over from another controller, which may still be
			// running: a new UUID, so that nothing it does afterwards (its
			// image, its revert, its Release) can touch ours; the
			// compare-and-write makes its next record update fail.
			res.UUID, res.Owner = volumeid.NewUUID(), p.Instance
			if err := reg.Save(ctx, &res); err != nil {
				return Volume{}, classify(err, "taking over the reservation")
			}
		}
	}

	v, err := p.place(ctx, log, reg, &res, req, size, o)
	if err != nil {
		if undoFailed(err) {
			// Something may be left on res.Backend: keep the reservation,
			// which records it, for the retry or the recovery loop.
			return Volume{}, err
		}
		// Revert the reservation: a later retry starts afresh.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), flow.UndoTimeout)
		if rerr := reg.Release(uctx, records.KindVolume, req.Name, res.UUID); rerr != nil {
			log.Error("could not release the name reservation", "error", rerr)
		}
		cancel()
		return Volume{}, err
	}
	return v, nil
}

func reserve(ctx context.Context, reg *records.Registry, r records.Reservation) (records.Reservation, bool, error) {
	r.UUID = volumeid.NewUUID()
	return reg.Reserve(ctx, r)
}

// chooseSize serves any range RBD can represent: whole MiB where the range
// holds one, else the exact byte count asked for (RBD sizes are bytes).
func chooseSize(req Request, imageSize uint64) (uint64, error) {
	size := RoundUp(req.RequiredBytes)
	if size == 0 {
		size = RoundUp(imageSize)
		if size == 0 {
			size = defaultBlank
		}
		if req.LimitBytes != 0 && size > req.LimitBytes {
			size = req.LimitBytes / mib * mib
			if size < imageSize {
				size = imageSize
			} else if size == 0 {
				size = req.LimitBytes
			}
		}
	}
	if req.LimitBytes != 0 && size > req.LimitBytes {
		size = max(req.RequiredBytes, imageSize) // no whole MiB in the range
	}
	if req.LimitBytes != 0 && size > req.LimitBytes {
		return 0, errorf(OutOfRange, nil, "the volume must hold the %d bytes of its source %s, above limit_bytes %d", imageSize, req.sourceName(), req.LimitBytes)
	}
	if size < imageSize {
		return 0, errorf(OutOfRange, nil, "the volume (%d bytes) would be smaller than its source %s (%d bytes)", size, req.sourceName(), imageSize)
	}
	return size, nil
}

// compatible decides whether a retry under an existing name asks for the same volume.
func compatible(res records.Reservation, req Request) error {
	if !maps.Equal(res.Params, req.Params) && !(len(res.Params) == 0 && len(req.Params) == 0) {
		return errorf(AlreadyExists, nil, "volume name %q is already used by a volume with other parameters (%v, requested %v)", req.Name, res.Params, req.Params)
	}
	if res.SizeBytes < req.RequiredBytes || (req.LimitBytes != 0 && res.SizeBytes > req.LimitBytes) {
		limit := "no limit"
		if req.LimitBytes != 0 {
			limit = fmt.Sprintf("at most %d", req.LimitBytes)
		}
		return errorf(AlreadyExists, nil, "volume name %q is already used by a volume of %d bytes, outside the requested range (at least %d, %s)", req.Name, res.SizeBytes, req.RequiredBytes, limit)
	}
	return nil
}

// existing returns the volume of a ready reservation: ok=false when its
// image is gone (the create is redone), an error when that cannot be told
// now (a ready volume is never discarded on a transient failure).
func (p *Provisioner) existing(ctx context.Context, res records.Reservation) (Volume, bool, error) {
	id, bname, info, err := p.Stat(ctx, res.VolumeID)
	var pe *Error
	if errors.As(err, &pe) && pe.Kind == NotFound {
		return Volume{}, false, nil
	}
	if err != nil {
		return Volume{}, false, err
	}
	_, bcfg, _ := p.Backends.Get(bname)
	return Volume{ID: id, Backend: bname, Zone: bcfg.Zone, SizeBytes: info.SizeBytes, Source: info.Metadata[MetaSource]}, true, nil
}

// discardPartial removes what an interrupted attempt may have left.
func (p *Provisioner) discardPartial(ctx context.Context, reg *records.Registry, res *records.Reservation) error {
	if res.Backend == "" {
		return nil
	}
	cl, _, err := p.Backends.Get(res.Backend)
	if err != nil {
		return errorf(Unavailable, err, "an interrupted create of %q left work on backend %q, which is unreachable", res.Name, res.Backend)
	}
	if err := cl.RemoveImage(ctx, volumeid.ImagePrefix+res.UUID); err != nil {
		if errors.Is(err, backend.ErrBusy) {
			return errorf(Unavailable, err, "the image an interrupted create of %q left is still open by a client (a dead client's watch expires within about 30 s); retry", res.Name)
		}
		return classify(err, "removing the image of an interrupted create")
	}
	// A clone of a volume may have left its temporary snapshot on the source.
	if src, ok := strings.CutPrefix(res.Params[sourceParam], "volume "); ok {
		if sid, _, scl, err := p.Lookup(ctx, src); err == nil {
			for _, image := range []string{sid.ImageName(), sid.DeletedImageName()} {
				if err := scl.RemoveSnapshot(ctx, image, volumeid.ClonePrefix+res.UUID); err != nil {
					return classify(err, "removing the temporary snapshot of an interrupted clone")
				}
			}
		}
	}
	// The index entry is written before the reservation names the volume,
	// so derive its ID: a crash in between must not leave a phantom volume.
	id, err := volumeid.New(cl.ClusterID(), cl.PoolID())
	if err != nil {
		return classify(err, "naming the volume of an interrupted create")
	}
	id.UUID = res.UUID
	if err := reg.UnindexVolume(ctx, id.String()); err != nil {
		return classify(err, "unindexing an interrupted create")
	}
	if err := reg.DropMove(ctx, id.String()); err != nil { // a ready volume, moved, then lost
		return classify(err, "dropping the move record of a lost volume")
	}
	res.Backend, res.VolumeID, res.State = "", "", records.StateCreating
	return classify(reg.Save(ctx, res), "resetting the reservation")
}

// place schedules and creates, rescheduling to the next backend on failure.
func (p *Provisioner) place(ctx context.Context, log *slog.Logger, reg *records.Registry, res *records.Reservation,
	req Request, size uint64, o origin) (Volume, error) {
	sreq := req.Sched
	sreq.SizeBytes = size
	sreq.ImageClusters = o.clusters
	tried := map[string]bool{}
	var failures []string
	for attempt := 1; attempt <= max(1, p.Attempts); attempt++ {
		// Pick charges the chosen backend at once; createOn's revert releases it.
		cand, err := p.Backends.Scheduler().Pick(sreq, tried)
		if err != nil {
			if len(failures) > 0 {
				break
			}
			var nc *scheduler.NoCandidateError
			if errors.As(err, &nc) {
				metrics.Refused(nc.Filters())
			}
			if nc != nil && nc.AnyDown() {
				return Volume{}, errorf(Unavailable, nil, "%v; retry when the backend is back", err)
			}
			return Volume{}, errorf(ResourceExhausted, nil, "%v", err)
		}
		name := cand.Backend.Name
		tried[name] = true
		metrics.Placed(name)
		log.Info("scheduled", "backend", name, "attempt", attempt, "zone", cand.Backend.Zone, "local", cand.Local, "virtualFree", cand.VirtualFree)
		v, err := p.createOn(ctx, log, reg, res, req, size, name, cand.Local, o)
		if err == nil {
			return v, nil
		}
		if undoFailed(err) {
			// Moving on would lose track of what the failed attempt left
			// (the reservation records one backend): stop here.
			log.Error("create failed and could not be fully reverted; the retry or the recovery loop finishes the clean-up", "backend", name, "error", err)
			return Volume{}, errorf(Unavailable, err, "creating %q on backend %s failed and its clean-up is still pending; retry", req.Name, name)
		}
		failures = append(failures, fmt.Sprintf("%s: %v", name, err))
		if ctx.Err() != nil {
			break
		}
		log.Warn("create failed on backend; rescheduling", "backend", name, "attempt", attempt, "error", err)
		metrics.Rescheduled()
	}
	if ctx.Err() != nil {
		return Volume{}, errorf(DeadlineExceeded, ctx.Err(), "creating %q did not finish in time (tried %s)", req.Name, strings.Join(failures, "; "))
	}
	return Volume{}, errorf(Internal, nil, "creating %q failed on every backend tried: %s", req.Name, strings.Join(failures, "; "))
}

// createOn runs the volume-service steps on one backend, each with its undo.
func (p *Provisioner) createOn(ctx context.Context, log *slog.Logger, reg *records.Registry, res *records.Reservation,
	req Request, size uint64, bname string, local bool, o origin) (Volume, error) {
	// Pick charged size to bname as in flight; give it back exactly once on
	// any failure, or settle it on success.
	charged := true
	uncharge := func(context.Context) error {
		if charged {
			p.Backends.Scheduler().Abandon(bname, size)
			charged = false
		}
		return nil
	}
	cl, bcfg, err := p.Backends.Get(bname)
	if err != nil {
		_ = uncharge(ctx)
		return Volume{}, err
	}
	id, err := volumeid.New(cl.ClusterID(), cl.PoolID())
	if err != nil {
		_ = uncharge(ctx)
		return Volume{}, err
	}
	id.UUID = res.UUID
	image := id.ImageName()
	method, viaCache := "blank", false
	meta := map[string]string{MetaName: req.Name}
	maps.Copy(meta, req.Metadata)
	var spec backend.ImageSpec
	if o.spec != nil {
		spec = *o.spec
		if o.volume != nil { // a clone of a volume goes through a snapshot of it
			spec.Snap = volumeid.ClonePrefix + res.UUID
		}
		meta[MetaSource] = o.label
		if local && spec.Snap != "" { // a group snapshot's member has no name to clone
			method = "clone"
			meta[MetaSourceFSID] = cl.ClusterID()
		} else {
			method = "copy"
		}
		// A golden image from another cluster is cloned from the image
		// cache there when there is an entry or the backend keeps one.
		if o.golden && o.sources[cl.ClusterID()] == nil && (local || bcfg.ImageCache.Enabled) {
			viaCache, method = true, "clone"
			meta[MetaSourceFSID] = cl.ClusterID()
		}
	}
	meta[MetaSourceMethod] = method
	switch {
	case method == "clone" && o.depth != 0:
		meta[MetaDepth] = strconv.Itoa(max(o.depth, 0) + 1)
	case method == "clone" && !o.chained:
		meta[MetaDepth] = "1" // a golden image's clone
	case method != "clone":
		meta[MetaDepth] = "0" // a copy or a blank volume has no parent
	}

	makeImage := flow.Step{
		Name: method + " image",
		Do: func(ctx context.Context) error {
			if method == "blank" {
				return cl.CreateImage(ctx, image, size)
			}
			src := pickSource(o.sources)
			if src == nil {
				return fmt.Errorf("%s is in no reachable cluster", o.label)
			}
			if viaCache {
				err := p.cloneCached(ctx, reg, bname, cl, spec, src, image, meta)
				if !errors.Is(err, errNoCacheEntry) {
					return err
				}
				// Evicted since placement, and this backend keeps no cache.
				meta[MetaSourceMethod], meta[MetaDepth] = "copy", "0"
				delete(meta, MetaSourceFSID)
				return cl.CopyFrom(ctx, src, spec, image)
			}
			do := func() error {
				if method == "clone" {
					return cl.Clone(ctx, spec, image)
				}
				return cl.CopyFrom(ctx, src, spec, image)
			}
			err := do()
			if errors.Is(err, backend.ErrNotFound) && o.altImage != "" {
				// The snapshot's volume was deleted: its image was set aside.
				spec.Image = o.altImage
				err = do()
			}
			return err
		},
		Undo: func(ctx context.Context) error { return cl.RemoveImage(ctx, image) },
	}
	steps := append([]flow.Step{
		{Name: "account capacity", Do: func(context.Context) error { return nil }, Undo: uncharge},
		{
			Name: "record placement",
			Do: func(ctx context.Context) error {
				res.Backend = bname
				return reg.Save(ctx, res)
			},
		},
	}, o.around(makeImage, spec)...)
	steps = append(steps, []flow.Step{
		p.flattenStep(reg, cl, o, meta, bname, image, id.String()),
		{Name: "resize and write metadata", Do: func(ctx context.Context) error { return cl.Finish(ctx, image, size, meta) }},
		{
			Name: "index volume",
			Do: func(ctx context.Context) error {
				return reg.IndexVolume(ctx, records.VolumeEntry{
					VolumeID: id.String(), Name: req.Name, Backend: bname, Zone: bcfg.Zone,
					SizeBytes: size, Source: meta[MetaSource], Created: res.Created,
				})
			},
			Undo: func(ctx context.Context) error { return reg.UnindexVolume(ctx, id.String()) },
		},
		{
			Name: "mark ready",
			Do: func(ctx context.Context) error {
				res.State, res.VolumeID = records.StateReady, id.String()
				return reg.Save(ctx, res)
			},
		},
	}...)
	if err := flow.Run(ctx, log.With("backend", bname, "volume", id.String()), steps...); err != nil {
		_ = uncharge(ctx) // in case the flow stopped before its first step
		if req.Image != nil {
			p.images.forget(*req.Image) // look again next time: the image may be gone
		}
		return Volume{}, err
	}
	p.Backends.Scheduler().Settle(bname, size)
	if o.chained {
		p.kickFlattener() // in case this create queued a flatten
	}
	log.Info("volume created", "volume", id.String(), "backend", bname, "method", method, "size", size)
	return Volume{ID: id, Backend: bname, Zone: bcfg.Zone, SizeBytes: size, Source: meta[MetaSource]}, nil
}

// findImage looks for the golden image in every reachable cluster, reusing
// a recent answer while every cluster it named is still reachable.
func (p *Provisioner) findImage(ctx context.Context, spec backend.ImageSpec) (origin, error) {
	o := origin{spec: &spec, label: spec.String(), golden: true,
		clusters: map[string]bool{}, sources: map[string]backend.Cluster{}, fingerprints: map[string]string{}}
	clusters := p.Backends.Clusters()
	if e, ok := p.images.get(spec); ok {
		for fsid, fp := range e.fingerprints {
			if cl, up := clusters[fsid]; up {
				o.clusters[fsid], o.sources[fsid], o.fingerprints[fsid] = true, cl, fp
			}
		}
		if len(o.clusters) == len(e.fingerprints) {
			o.size = e.size
			return o, nil
		}
		o.clusters, o.sources, o.fingerprints = map[string]bool{}, map[string]backend.Cluster{}, map[string]string{}
	}
	var problems []string
	for fsid, cl := range clusters {
		info, err := cl.SnapshotInfo(ctx, spec)
		switch {
		case err == nil:
			o.clusters[fsid], o.sources[fsid], o.size = true, cl, info.SizeBytes
			o.fingerprints[fsid] = info.Fingerprint(fsid)
		case errors.Is(err, backend.ErrNotProtected):
			return origin{}, errorf(FailedPrecondition, err, "image %s cannot be cloned", spec)
		case errors.Is(err, backend.ErrNotFound):
		default:
			problems = append(problems, fmt.Sprintf("cluster %s: %v", fsid, err))
		}
	}
	if down := p.Backends.Down(); len(o.clusters) == 0 && len(down) > 0 {
		problems = append(problems, fmt.Sprintf("backends %v are down", down))
	}
	if len(o.clusters) == 0 {
		if len(problems) > 0 {
			return origin{}, errorf(Unavailable, nil, "image %s was not found, and some clusters could not be searched: %s", spec, strings.Join(problems, "; "))
		}
		return origin{}, errorf(NotFound, nil, "image %s was not found in any reachable cluster (it must be a protected snapshot: rbd snap create/protect)", spec)
	}
	if len(problems) == 0 {
		p.images.put(spec, maps.Clone(o.fingerprints), o.size)
	}
	return o, nil
}

func pickSource(sources map[string]backend.Cluster) backend.Cluster {
	for _, c := range sources {
		return c
	}
	return nil
}

// classify turns a backend/records error into a provision error.
func classify(err error, what string) error {
	if err == nil {
		return nil
	}
	var pe *Error
	switch {
	case errors.As(err, &pe):
		return err
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return errorf(DeadlineExceeded, err, "%s", what)
	case errors.Is(err, backend.ErrDown):
		return errorf(Unavailable, err, "%s", what)
	case errors.Is(err, records.ErrConflict):
		return errorf(Aborted, err, "%s: a concurrent change to the same record won; retry", what)
	}
	return errorf(Internal, err, "%s", what)
}

// undoFailed reports whether a flow failed and could not revert all it did.
func undoFailed(err error) bool {
	var fe *flow.Error
	return errors.As(err, &fe) && len(fe.UndoErrors) > 0
}
