package main

import (
	"context"
	"fmt"

	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"
)

// snapshots measures CreateSnapshot against rbd_snap_create (open, snapshot,
// close) on an image of the same kind, and restores of one snapshot
// (CreateVolume from a snapshot source) against a format-2 clone of one RBD
// snapshot plus a resize, per concurrency level, in alternating order.
func (b *bench) snapshots(ctx context.Context) error {
	o := b.o
	// Below maxSnapshotsPerImage (256) on the one source volume.
	n := min(o.n, 200)
	srcID, err := b.createVolume(ctx, b.nameOf("snapsrc"), true)
	if err != nil {
		return fmt.Errorf("source volume: %w", err)
	}
	defer func() { b.cleanupErr("source volume", b.deleteVolume(context.WithoutCancel(ctx), srcID)) }()
	base := b.nameOf("snapbase")
	if err := b.baselineClone(base); err != nil {
		return fmt.Errorf("baseline source: %w", err)
	}
	defer func() { b.cleanupErr("baseline source", b.baselinePurge(base)) }()

	snapIDs := make([]string, n)
	basalt := func() {
		bt := b.withCPU(implBasalt, func() *batch {
			return runBatch(ctx, n, 1, func(ctx context.Context, i int) error {
				r, err := b.env.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: b.nameOf("snap", i), SourceVolumeId: srcID})
				snapIDs[i] = r.GetSnapshot().GetSnapshotId()
				return err
			})
		})
		b.addRow("CreateSnapshot", implBasalt, true, bt, "RBD snapshot + records, over gRPC")
	}
	baseline := func() {
		bt := b.withCPU(implBaseline, func() *batch {
			return runBatch(ctx, n, 1, func(ctx context.Context, i int) error {
				return cephCall(ctx, "snap create", func() error { return b.baselineSnap(base, fmt.Sprint("s", i)) })
			})
		})
		b.addRow("CreateSnapshot", implBaseline, true, bt, "librbd: Open + rbd_snap_create + Close")
	}
	alternate(0, basalt, baseline)

	// Restores of the first snapshot; the baseline clones the first RBD
	// snapshot of its own image the same way (format 2, no protection).
	if snapIDs[0] == "" {
		return fmt.Errorf("no snapshot to restore")
	}
	src := &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snapIDs[0]}}}
	for li, c := range o.conc {
		ids := make([]string, o.n)
		names := make([]string, o.n)
		ok := make([]bool, o.n)
		restore := func() {
			bt := b.withCPU(implBasalt, func() *batch {
				return runBatch(ctx, o.n, c, func(ctx context.Context, i int) error {
					r, err := b.env.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{
						Name: b.nameOf("restore", c, i), CapacityRange: &csi.CapacityRange{RequiredBytes: o.size},
						VolumeCapabilities: []*csi.VolumeCapability{mountCap()}, VolumeContentSource: src,
					})
					ids[i] = r.GetVolume().GetVolumeId()
					return err
				})
			})
			b.addRow("Restore snapshot", implBasalt, true, bt, "CreateVolume from one snapshot (clone v2 + resize), over gRPC")
		}
		raw := func() {
			bt := b.withCPU(implBaseline, func() *batch {
				return runBatch(ctx, o.n, c, func(ctx context.Context, i int) error {
					names[i] = b.nameOf("rawrestore", c, i)
					err := cephCall(ctx, "clone", func() error { return b.baselineRestore(base, "s0", names[i]) })
					ok[i] = err == nil
					return err
				})
			})
			b.addRow("Restore snapshot", implBaseline, true, bt, "librbd: rbd.CloneImage (format 2) + Open + Resize + Close")
		}
		alternate(li, restore, raw)
		// Untimed clean-up, so the next level starts from the same state.
		b.deleteAll(ctx, ids, 8)
		for i, name := range names {
			if ok[i] {
				b.cleanupErr("raw restore", b.baselineRemove(name))
			}
		}
	}
	for _, id := range snapIDs {
		if id != "" {
			_, err := b.env.ctrl.DeleteSnapshot(context.WithoutCancel(ctx), &csi.DeleteSnapshotRequest{SnapshotId: id})
			b.cleanupErr("DeleteSnapshot", err)
		}
	}
	return nil
}

func (b *bench) cleanupErr(what string, err error) {
	if err != nil && !b.interrupted() {
		b.noteCleanup("%s: %v", what, err)
	}
}

func (b *bench) baselineSnap(image, snap string) error {
	img, err := rbd.OpenImage(b.env.volumes, image, rbd.NoSnapshot)
	if err != nil {
		return err
	}
	if _, err := img.CreateSnapshot(snap); err != nil {
		_ = img.Close()
		return err
	}
	return img.Close()
}

func (b *bench) baselineRestore(image, snap, name string) error {
	return rawClone(b.env.volumes, image, snap, name, uint64(b.o.size))
}

// rawClone is a format-2 clone of image@snap as name in the same pool, then
// a resize: what a restore (or an image-cache hit) is in raw librbd.
func rawClone(ioctx *rados.IOContext, image, snap, name string, size uint64) error {
	opts := rbd.NewRbdImageOptions()
	defer opts.Destroy()
	if err := opts.SetUint64(rbd.ImageOptionFeatures, rbd.FeatureLayering); err != nil {
		return err
	}
	if err := opts.SetUint64(rbd.ImageOptionCloneFormat, 2); err != nil {
		return err
	}
	if err := rbd.CloneImage(ioctx, image, snap, ioctx, name, opts); err != nil {
		return fmt.Errorf("clone %s: %w", name, err)
	}
	img, err := rbd.OpenImage(ioctx, name, rbd.NoSnapshot)
	if err != nil {
		return err
	}
	if err := img.Resize(size); err != nil {
		_ = img.Close()
		return err
	}
	return img.Close()
}

// baselinePurge removes an image and its snapshots (the clones are gone).
func (b *bench) baselinePurge(image string) error {
	img, err := rbd.OpenImage(b.env.volumes, image, rbd.NoSnapshot)
	if err != nil {
		return err
	}
	snaps, err := img.GetSnapshotNames()
	for _, s := range snaps {
		if err == nil {
			err = img.GetSnapshot(s.Name).Remove()
		}
	}
	if cerr := img.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return b.baselineRemove(image)
}
