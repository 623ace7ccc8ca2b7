package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"
)

// bench holds the results while the parts run.
type bench struct {
	ctx      context.Context // the run's context: cancelled by Ctrl-C
	o        *options
	env      *env
	mu       sync.Mutex
	rows     []*row
	memory   memoryFigures
	failures []string // setup failures of parts (exit code 1)
	others   monitor
	cleanup  []string // untimed clean-up problems (reported, not fatal)
}

type memoryFigures struct {
	IdleRSSKiB      int64 `json:"idle_rss_kib"`
	IdleHWMKiB      int64 `json:"idle_hwm_kib"`
	ScaleVolumes    int   `json:"scale_volumes"`
	ScaleRSSKiB     int64 `json:"scale_rss_kib"`
	ScaleHWMKiB     int64 `json:"scale_hwm_kib"`
	FinalRSSKiB     int64 `json:"final_rss_kib"`
	FinalHWMKiB     int64 `json:"final_hwm_kib"`
	DriverExited    bool  `json:"driver_exited_early"`
	ScaleListed     int   `json:"scale_listed_entries"`
	ScaleListWalks  int   `json:"scale_list_walks"`
	ScaleListedPage int   `json:"scale_list_page_size"`
}

func mountCap() *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

// createVolume is one CreateVolume call; image "" makes a blank volume.
func (b *bench) createVolume(ctx context.Context, name string, fromGolden bool) (string, error) {
	params := map[string]string{}
	if fromGolden {
		params["image"] = goldenSpec
	}
	r, err := b.env.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name:               name,
		CapacityRange:      &csi.CapacityRange{RequiredBytes: b.o.size},
		VolumeCapabilities: []*csi.VolumeCapability{mountCap()},
		Parameters:         params,
	})
	if err != nil {
		return "", err
	}
	if r.GetVolume().GetCapacityBytes() < b.o.size {
		return r.GetVolume().GetVolumeId(), fmt.Errorf("volume %s has %d bytes, asked for %d", r.GetVolume().GetVolumeId(), r.GetVolume().GetCapacityBytes(), b.o.size)
	}
	return r.GetVolume().GetVolumeId(), nil
}

func (b *bench) deleteVolume(ctx context.Context, id string) error {
	_, err := b.env.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
	return err
}

// baselineClone is what CreateVolume from the golden image boils down to
// with raw librbd: clone the protected snapshot, then resize.
func (b *bench) baselineClone(name string) error {
	opts := rbd.NewRbdImageOptions()
	defer opts.Destroy()
	if err := opts.SetUint64(rbd.ImageOptionFeatures, rbd.FeatureLayering); err != nil {
		return err
	}
	if err := rbd.CloneImage(b.env.images, "golden", "v1", b.env.volumes, name, opts); err != nil {
		return fmt.Errorf("clone %s: %w", name, err)
	}
	img, err := rbd.OpenImage(b.env.volumes, name, rbd.NoSnapshot)
	if err != nil {
		return fmt.Errorf("open %s: %w", name, err)
	}
	if err := img.Resize(uint64(b.o.size)); err != nil {
		_ = img.Close()
		return fmt.Errorf("resize %s: %w", name, err)
	}
	return img.Close()
}

func (b *bench) baselineCreateBlank(name string) error {
	opts := rbd.NewRbdImageOptions()
	defer opts.Destroy()
	if err := opts.SetUint64(rbd.ImageOptionFeatures, rbd.FeatureLayering); err != nil {
		return err
	}
	return rbd.CreateImage(b.env.volumes, name, uint64(b.o.size), opts)
}

func (b *bench) baselineRemove(name string) error {
	return rbd.RemoveImage(b.env.volumes, name)
}

// librbd calls cannot be cancelled; ceph calls from the bench run with the
// operation's deadline, the call itself is bounded by rados_osd_op_timeout.
func cephCall(ctx context.Context, what string, f func() error) error {
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", what, ctx.Err())
	}
}

// createDelete measures CreateVolume (from the golden image) and DeleteVolume
// against clone+resize and remove with librbd, per concurrency level. The
// two implementations run one after the other at each level, in alternating
// order so neither always goes first.
func (b *bench) createDelete(ctx context.Context) error {
	o := b.o
	// Warm-up, untimed: the first calls open connections and caches on
	// both sides (gRPC, the golden image's header, the OSD's PGs).
	for i := 0; i < 3; i++ {
		name := b.nameOf("warm", i)
		id, err := b.createVolume(ctx, name, true)
		if err != nil {
			return fmt.Errorf("warm-up CreateVolume: %w", err)
		}
		if err := b.deleteVolume(ctx, id); err != nil {
			return fmt.Errorf("warm-up DeleteVolume: %w", err)
		}
		bname := b.nameOf("warm", "base", i)
		if err := b.baselineClone(bname); err != nil {
			return fmt.Errorf("warm-up clone: %w", err)
		}
		if err := b.baselineRemove(bname); err != nil {
			return fmt.Errorf("warm-up remove: %w", err)
		}
	}
	timedCreate, timedDelete := o.has("create"), o.has("delete")
	for li, c := range o.conc {
		ids := make([]string, o.n)
		bnames := make([]string, o.n)
		bok := make([]bool, o.n)
		basalt := func() {
			bt := b.withCPU(implBasalt, func() *batch {
				return runBatch(ctx, o.n, c, func(ctx context.Context, i int) error {
					id, err := b.createVolume(ctx, b.nameOf("c", c, i), true)
					ids[i] = id // an ID with an error (wrong size) is still deleted
					return err
				})
			})
			if timedCreate {
				b.addRow("CreateVolume", implBasalt, true, bt, "from images/golden@v1 (clone + resize), over gRPC")
			}
		}
		baseline := func() {
			bt := b.withCPU(implBaseline, func() *batch {
				return runBatch(ctx, o.n, c, func(ctx context.Context, i int) error {
					bnames[i] = b.nameOf("base", c, i)
					err := cephCall(ctx, "clone", func() error { return b.baselineClone(bnames[i]) })
					bok[i] = err == nil
					return err
				})
			})
			if timedCreate {
				b.addRow("CreateVolume", implBaseline, true, bt, "librbd: rbd.CloneImage + Open + Resize + Close")
			}
		}
		alternate(li, basalt, baseline)

		var delIDs []string
		for _, id := range ids {
			if id != "" {
				delIDs = append(delIDs, id)
			}
		}
		var delNames []string
		for i, n := range bnames {
			if bok[i] {
				delNames = append(delNames, n)
			}
		}
		delBasalt := func() {
			bt := b.withCPU(implBasalt, func() *batch {
				return runBatch(ctx, len(delIDs), c, func(ctx context.Context, i int) error { return b.deleteVolume(ctx, delIDs[i]) })
			})
			bt.conc = c
			// DeleteVolume moves images to the RBD trash; their data goes in
			// the background. Wait for that (so the next measurement does
			// not compete with it) and report when the last one was gone.
			tail, terr := b.waitTrashEmpty(ctx)
			note := fmt.Sprintf("clones of the golden image, over gRPC; the RBD trash was empty %.0f ms after the last call (all data removed: %.1f volumes/s)",
				ms(tail), float64(len(delIDs))/(bt.wall+tail).Seconds())
			if terr != nil {
				note = fmt.Sprintf("clones of the golden image, over gRPC; the trash did not empty: %v", terr)
			}
			if timedDelete {
				b.addRow("DeleteVolume", implBasalt, true, bt, note)
			}
			b.retryDeletes(ctx, delIDs, bt.failed)
		}
		delBaseline := func() {
			bt := b.withCPU(implBaseline, func() *batch {
				return runBatch(ctx, len(delNames), c, func(ctx context.Context, i int) error {
					return cephCall(ctx, "remove", func() error { return b.baselineRemove(delNames[i]) })
				})
			})
			bt.conc = c
			if timedDelete {
				b.addRow("DeleteVolume", implBaseline, true, bt, "librbd: rbd.RemoveImage")
			}
		}
		alternate(li, delBasalt, delBaseline)
	}
	return nil
}

// interrupted: after Ctrl-C, clean-up inside the cluster is skipped (the
// cluster is destroyed anyway) so the bench tears down quickly.
func (b *bench) interrupted() bool { return b.ctx != nil && b.ctx.Err() != nil }

// retryDeletes deletes, untimed, volumes whose timed delete failed, so that
// they do not skew the next measurements. Problems are reported.
func (b *bench) retryDeletes(ctx context.Context, ids []string, failed []int) {
	if b.interrupted() {
		return
	}
	for _, i := range failed {
		id := ids[i]
		var err error
		for attempt := 0; attempt < 20 && ctx.Err() == nil; attempt++ {
			if err = runOne(ctx, func(ctx context.Context) error { return b.deleteVolume(ctx, id) }); err == nil {
				break
			}
			time.Sleep(3 * time.Second)
		}
		if err != nil {
			b.noteCleanup("DeleteVolume %s (retried): %v", id, err)
		}
	}
}

func (b *bench) noteCleanup(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	logf("clean-up: %s", msg)
	b.mu.Lock()
	b.cleanup = append(b.cleanup, msg)
	b.mu.Unlock()
}

// makeBlank creates n blank volumes, untimed (setup of another part).
func (b *bench) makeBlank(ctx context.Context, prefix string, n, conc int) ([]string, error) {
	ids := make([]string, n)
	bt := runBatch(ctx, n, conc, func(ctx context.Context, i int) error {
		id, err := b.createVolume(ctx, b.nameOf(prefix, i), false)
		ids[i] = id
		return err
	})
	if bt.errs > 0 {
		return ids, fmt.Errorf("creating %d blank volumes: %d failed (%v)", n, bt.errs, bt.msgs)
	}
	return ids, nil
}

func (b *bench) deleteAll(ctx context.Context, ids []string, conc int) {
	if b.interrupted() {
		return
	}
	var live []string
	for _, id := range ids {
		if id != "" {
			live = append(live, id)
		}
	}
	bt := runBatch(ctx, len(live), conc, func(ctx context.Context, i int) error { return b.deleteVolume(ctx, live[i]) })
	b.retryDeletes(ctx, live, bt.failed)
}

// publish measures ControllerPublish and ControllerUnpublish of N blank
// volumes to this node at concurrency 1 and 8 (no librbd equivalent).
func (b *bench) publish(ctx context.Context) error {
	ids, err := b.makeBlank(ctx, "pub", b.o.n, 8)
	defer b.deleteAll(context.WithoutCancel(ctx), ids, 8)
	if err != nil {
		return err
	}
	for _, c := range []int{1, 8} {
		bt := b.withCPU(implBasalt, func() *batch {
			return runBatch(ctx, len(ids), c, func(ctx context.Context, i int) error {
				r, err := b.env.ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{
					VolumeId: ids[i], NodeId: nodeID, VolumeCapability: mountCap(),
				})
				if err == nil && r.GetPublishContext()["attachmentID"] == "" {
					return errors.New("publish_context has no attachmentID")
				}
				return err
			})
		})
		b.addRow("ControllerPublish", implBasalt, false, bt, "blank volumes to "+nodeID)
		bt = b.withCPU(implBasalt, func() *batch {
			return runBatch(ctx, len(ids), c, func(ctx context.Context, i int) error {
				_, err := b.env.ctrl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: ids[i], NodeId: nodeID})
				return err
			})
		})
		b.addRow("ControllerUnpublish", implBasalt, false, bt, "")
	}
	return nil
}

// scale creates scale-n blank volumes (concurrency 16), reads the driver's
// RSS, pages through ListVolumes and calls GetCapacity, then deletes them.
func (b *bench) scale(ctx context.Context) error {
	o := b.o
	ids := make([]string, o.scaleN)
	bt := b.withCPU(implBasalt, func() *batch {
		return runBatch(ctx, o.scaleN, 16, func(ctx context.Context, i int) error {
			id, err := b.createVolume(ctx, b.nameOf("scale", i), false)
			ids[i] = id
			return err
		})
	})
	b.addRow("CreateVolume (blank)", implBasalt, false, bt, "scale setup")
	defer func() {
		if b.interrupted() {
			return
		}
		var live []string
		for _, id := range ids {
			if id != "" {
				live = append(live, id)
			}
		}
		dctx := context.WithoutCancel(ctx)
		bt := b.withCPU(implBasalt, func() *batch {
			return runBatch(dctx, len(live), 16, func(ctx context.Context, i int) error { return b.deleteVolume(ctx, live[i]) })
		})
		b.addRow("DeleteVolume (blank)", implBasalt, false, bt, "scale teardown")
		b.retryDeletes(dctx, live, bt.failed)
	}()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	created := bt.n - bt.errs
	time.Sleep(time.Second)
	b.memory.ScaleVolumes = created
	b.memory.ScaleRSSKiB, b.memory.ScaleHWMKiB = b.env.rss()
	logf("driver RSS with %d volumes: %.1f MiB (peak %.1f MiB)", created, kibToMiB(b.memory.ScaleRSSKiB), kibToMiB(b.memory.ScaleHWMKiB))

	if !o.has("scale") {
		return nil
	}
	// ListVolumes: walk every page, several times, timing each page.
	const walks, pageSize = 5, 100
	pages := &batch{conc: 1}
	start := time.Now()
	for w := 0; w < walks && ctx.Err() == nil; w++ {
		token := ""
		seen := map[string]bool{}
		for p := 0; p < 100000; p++ {
			var r *csi.ListVolumesResponse
			t0 := time.Now()
			err := runOne(ctx, func(ctx context.Context) error {
				var err error
				r, err = b.env.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: pageSize, StartingToken: token})
				return err
			})
			d := time.Since(t0)
			pages.n++
			if err != nil {
				pages.fail(pages.n, err)
				break
			}
			pages.lat = append(pages.lat, d)
			if len(r.GetEntries()) > pageSize {
				pages.fail(pages.n, fmt.Errorf("page of %d entries, asked for at most %d", len(r.GetEntries()), pageSize))
			}
			for _, e := range r.GetEntries() {
				seen[e.GetVolume().GetVolumeId()] = true
			}
			token = r.GetNextToken()
			if token == "" {
				break
			}
		}
		// Every volume made for this part must be listed (others may exist).
		missing := 0
		for _, id := range ids {
			if id != "" && !seen[id] {
				missing++
			}
		}
		if missing > 0 {
			pages.fail(pages.n, fmt.Errorf("walk %d: %d of the %d volumes were not listed", w+1, missing, created))
		}
		b.memory.ScaleListed = len(seen)
	}
	pages.wall = time.Since(start)
	b.memory.ScaleListWalks, b.memory.ScaleListedPage = walks, pageSize
	b.addRow("ListVolumes page (100)", implBasalt, false, pages, fmt.Sprintf("%d walks over %d volumes; latency per page", walks, created))

	capN := 100
	bt = runBatch(ctx, capN, 1, func(ctx context.Context, i int) error {
		r, err := b.env.ctrl.GetCapacity(ctx, &csi.GetCapacityRequest{
			VolumeCapabilities: []*csi.VolumeCapability{mountCap()},
			AccessibleTopology: &csi.Topology{Segments: map[string]string{"topology.rbd.basalt.dev/zone": zone}},
		})
		if err == nil && r.GetAvailableCapacity() <= 0 {
			return fmt.Errorf("available_capacity %d", r.GetAvailableCapacity())
		}
		return err
	})
	b.addRow("GetCapacity", implBasalt, false, bt, fmt.Sprintf("zone %s, %d volumes exist", zone, created))
	return nil
}

// alternate runs a then b on even levels and b then a on odd ones, so
// neither side always runs on a warmer (or more fragmented) cluster.
func alternate(level int, a, b func()) {
	if level%2 == 0 {
		a()
		b()
		return
	}
	b()
	a()
}

// waitTrashEmpty waits until pool volumes' RBD trash is empty (Basalt's
// background purges done) and returns how long that took.
func (b *bench) waitTrashEmpty(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	for deadline := start.Add(10 * time.Minute); ; time.Sleep(20 * time.Millisecond) {
		var list []rbd.TrashInfo
		err := cephCall(ctx, "trash ls", func() error {
			var err error
			list, err = rbd.GetTrashList(b.env.volumes)
			return err
		})
		if err != nil {
			return time.Since(start), err
		}
		if len(list) == 0 {
			return time.Since(start), nil
		}
		if time.Now().After(deadline) {
			return time.Since(start), fmt.Errorf("%d images still in the trash after 10 minutes", len(list))
		}
	}
}
