package integration

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/basalt-csi/basalt/pkg/records"
)

// crashAt runs one operation in a real basalt-csi process armed to SIGKILL
// itself at point, then restarts it and retries the operation as a CO
// would: the retry must succeed.
func crashAt(t *testing.T, point string, op func(ctx context.Context, p *proc) error) *proc {
	t.Helper()
	return crashWith(t, cfgPath, point, op)
}

// crashWith is crashAt with the configuration file cfg.
func crashWith(t *testing.T, cfg, point string, op func(ctx context.Context, p *proc) error) *proc {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "csi.sock")
	p := startBinary(t, cfg, sock, "BASALT_FAILPOINTS="+point+"=kill")
	err := op(opCtx(t), p)
	_ = p.cmd.Wait()
	if !strings.Contains(p.log.String(), "failpoint "+point+": SIGKILL") {
		t.Fatalf("%s: the process did not die there (op: %v):\n%s", point, err, p.log)
	}
	p2 := startBinary(t, cfg, sock)
	if err := op(opCtx(t), p2); err != nil {
		t.Fatalf("%s: retry after the restart: %v\n%s", point, err, p2.log)
	}
	return p2
}

// The crash matrix: every step of CreateVolume (a clone of the golden
// image, a restore of a snapshot, a clone of a volume) and of
// CreateSnapshot, killed before and after it; the retry succeeds and, once
// everything is deleted, nothing is left in Ceph or in the records.
func TestCrashMatrix(t *testing.T) {
	ctx := opCtx(t)
	pin := map[string]string{"image": golden, "backend": "a-std"}
	// A source volume and snapshot for the restore and clone cases, made by
	// an unarmed process.
	setup := startBinary(t, cfgPath, filepath.Join(t.TempDir(), "csi.sock"))
	srcResp, err := setup.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "crash-src", VolumeCapabilities: mountCap(), Parameters: pin})
	if err != nil {
		t.Fatal(err)
	}
	src := srcResp.GetVolume().GetVolumeId()
	snapResp, err := setup.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "crash-src-snap", SourceVolumeId: src})
	if err != nil {
		t.Fatal(err)
	}
	_ = setup.cmd.Process.Kill()
	_ = setup.cmd.Wait()

	sources := map[string]*csi.VolumeContentSource{
		"golden":   nil,
		"snapshot": fromSnapshot(snapResp.GetSnapshot().GetSnapshotId()),
		"volume":   fromVolume(src),
	}
	createSteps := []string{"account capacity", "record placement", "clone image", "resize and write metadata", "check the clone depth", "index volume", "mark ready"}
	var last *proc
	n := 0
	for kind, cs := range sources {
		steps := createSteps
		if kind == "volume" {
			steps = append([]string{"snapshot the source volume", "drop the temporary snapshot"}, steps...)
		}
		for _, step := range steps {
			for _, when := range []string{"before", "after"} {
				n++
				name := fmt.Sprintf("crash-%s-%d", kind, n)
				req := &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: mountCap(), Parameters: pin, VolumeContentSource: cs}
				var id string
				last = crashAt(t, when+" "+step, func(ctx context.Context, p *proc) error {
					r, err := p.ctrl.CreateVolume(ctx, req)
					id = r.GetVolume().GetVolumeId()
					return err
				})
				if _, err := last.ctrl.DeleteVolume(opCtx(t), &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
					t.Fatalf("%s %s: delete: %v", when, step, err)
				}
			}
		}
	}
	for _, step := range []string{"snapshot the image", "index snapshot", "mark ready"} {
		for _, when := range []string{"before", "after"} {
			n++
			req := &csi.CreateSnapshotRequest{Name: fmt.Sprintf("crash-snap-%d", n), SourceVolumeId: src}
			var id string
			last = crashAt(t, when+" "+step, func(ctx context.Context, p *proc) error {
				r, err := p.ctrl.CreateSnapshot(ctx, req)
				id = r.GetSnapshot().GetSnapshotId()
				return err
			})
			if _, err := last.ctrl.DeleteSnapshot(opCtx(t), &csi.DeleteSnapshotRequest{SnapshotId: id}); err != nil {
				t.Fatalf("%s %s: delete snapshot: %v", when, step, err)
			}
		}
	}
	// CreateVolumeGroupSnapshot (of the source and a second volume) killed
	// at every step; the retry with the same name finishes it.
	r2, err := last.ctrl.CreateVolume(opCtx(t), &csi.CreateVolumeRequest{Name: "crash-src-2", VolumeCapabilities: mountCap(), Parameters: pin})
	if err != nil {
		t.Fatal(err)
	}
	src2 := r2.GetVolume().GetVolumeId()
	_ = last.cmd.Process.Kill()
	_ = last.cmd.Wait()
	for _, step := range []string{"take the group snapshot", "index the member snapshots", "index the group snapshot", "mark ready"} {
		for _, when := range []string{"before", "after"} {
			n++
			req := &csi.CreateVolumeGroupSnapshotRequest{Name: fmt.Sprintf("crash-group-%d", n), SourceVolumeIds: []string{src, src2}}
			var gid string
			last = crashAt(t, when+" "+step, func(ctx context.Context, p *proc) error {
				r, err := csi.NewGroupControllerClient(p.conn).CreateVolumeGroupSnapshot(ctx, req)
				gid = r.GetGroupSnapshot().GetGroupSnapshotId()
				return err
			})
			if _, err := csi.NewGroupControllerClient(last.conn).DeleteVolumeGroupSnapshot(opCtx(t), &csi.DeleteVolumeGroupSnapshotRequest{GroupSnapshotId: gid}); err != nil {
				t.Fatalf("%s %s: delete group snapshot: %v", when, step, err)
			}
			_ = last.cmd.Process.Kill()
			_ = last.cmd.Wait()
		}
	}
	// DeleteVolumeGroupSnapshot killed after the RBD group snapshot went,
	// and after the member entries went (the group's entry still there).
	for _, point := range []string{"delete-group/after-remove", "delete-group/after-unindex-members"} {
		n++
		p := startBinary(t, cfgPath, filepath.Join(t.TempDir(), "csi.sock"))
		r, err := csi.NewGroupControllerClient(p.conn).CreateVolumeGroupSnapshot(opCtx(t), &csi.CreateVolumeGroupSnapshotRequest{
			Name: fmt.Sprintf("crash-delgroup-%d", n), SourceVolumeIds: []string{src, src2}})
		if err != nil {
			t.Fatal(err)
		}
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
		gs := r.GetGroupSnapshot()
		var members []string
		for _, s := range gs.GetSnapshots() {
			members = append(members, s.GetSnapshotId())
		}
		last = crashAt(t, point, func(ctx context.Context, p *proc) error {
			_, err := csi.NewGroupControllerClient(p.conn).DeleteVolumeGroupSnapshot(ctx, &csi.DeleteVolumeGroupSnapshotRequest{
				GroupSnapshotId: gs.GetGroupSnapshotId(), SnapshotIds: members})
			return err
		})
		_ = last.cmd.Process.Kill()
		_ = last.cmd.Wait()
	}
	last = startBinary(t, cfgPath, filepath.Join(t.TempDir(), "csi.sock"))
	if _, err := last.ctrl.DeleteVolume(opCtx(t), &csi.DeleteVolumeRequest{VolumeId: src2}); err != nil {
		t.Fatal(err)
	}

	// DeleteSnapshot killed after the RBD snapshot went, and after its name
	// was released (its index entry still there).
	for _, point := range []string{"delete-snapshot/after-remove", "delete-snapshot/after-release"} {
		n++
		s, err := last.ctrl.CreateSnapshot(opCtx(t), &csi.CreateSnapshotRequest{Name: fmt.Sprintf("crash-delsnap-%d", n), SourceVolumeId: src})
		if err != nil {
			t.Fatal(err)
		}
		_ = last.cmd.Process.Kill()
		_ = last.cmd.Wait()
		last = crashAt(t, point, func(ctx context.Context, p *proc) error {
			_, err := p.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: s.GetSnapshot().GetSnapshotId()})
			return err
		})
	}

	// DeleteVolume killed after the image went (or was set aside for a
	// snapshot) and after the records went: the retry finishes the job.
	for _, point := range []string{"delete/after-remove", "delete/after-unindex"} {
		for _, withSnapshot := range []bool{false, true} {
			n++
			r, err := last.ctrl.CreateVolume(opCtx(t), &csi.CreateVolumeRequest{Name: fmt.Sprintf("crash-del-%d", n), VolumeCapabilities: mountCap(), Parameters: pin})
			if err != nil {
				t.Fatal(err)
			}
			vol := r.GetVolume().GetVolumeId()
			var snapID string
			if withSnapshot {
				s, err := last.ctrl.CreateSnapshot(opCtx(t), &csi.CreateSnapshotRequest{Name: fmt.Sprintf("crash-del-snap-%d", n), SourceVolumeId: vol})
				if err != nil {
					t.Fatal(err)
				}
				snapID = s.GetSnapshot().GetSnapshotId()
			}
			_ = last.cmd.Process.Kill() // the next process must start with its failpoint armed
			_ = last.cmd.Wait()
			last = crashAt(t, point, func(ctx context.Context, p *proc) error {
				_, err := p.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol})
				return err
			})
			if snapID != "" {
				if _, err := last.ctrl.DeleteSnapshot(opCtx(t), &csi.DeleteSnapshotRequest{SnapshotId: snapID}); err != nil {
					t.Fatalf("%s: delete snapshot: %v", point, err)
				}
			}
		}
	}
	// ControllerPublish killed between indexing the attachment for the node
	// and writing it, ControllerUnpublish between removing it and dropping
	// the node's index entry: the retries finish, and neither the volume
	// nor the node keeps an attachment.
	const crashNode = "crash-node"
	reg0 := registry(t, startDriver(t, configYAML(), nil))
	if err := reg0.RegisterNode(opCtx(t), records.Node{ID: crashNode, Zone: "zone-a"}); err != nil {
		t.Fatal(err)
	}
	vc := mountCap()[0]
	for _, point := range []string{"publish/after-index", "unpublish/after-save"} {
		n++
		_ = last.cmd.Process.Kill()
		_ = last.cmd.Wait()
		pub := &csi.ControllerPublishVolumeRequest{VolumeId: src, NodeId: crashNode, VolumeCapability: vc}
		unpub := &csi.ControllerUnpublishVolumeRequest{VolumeId: src, NodeId: crashNode}
		if point == "unpublish/after-save" { // published first, by an unarmed process
			p := startBinary(t, cfgPath, filepath.Join(t.TempDir(), "csi.sock"))
			if _, err := p.ctrl.ControllerPublishVolume(opCtx(t), pub); err != nil {
				t.Fatal(err)
			}
			_ = p.cmd.Process.Kill()
			_ = p.cmd.Wait()
		}
		last = crashAt(t, point, func(ctx context.Context, p *proc) error {
			var err error
			if point == "publish/after-index" {
				_, err = p.ctrl.ControllerPublishVolume(ctx, pub)
			} else {
				_, err = p.ctrl.ControllerUnpublishVolume(ctx, unpub)
			}
			return err
		})
		if _, err := last.ctrl.ControllerUnpublishVolume(opCtx(t), unpub); err != nil { // idempotent after the second
			t.Fatal(err)
		}
	}
	if atts, err := reg0.NodeAttachments(opCtx(t), crashNode); err != nil || len(atts) > 0 {
		t.Fatalf("node index after the publish crashes: %v %v", atts, err)
	}

	// ControllerExpandVolume killed after the image grew, before the index
	// took the new size: the retry answers the new size and corrects it.
	n++
	grown := uint64(2 << 30)
	last = crashAt(t, "expand/after-resize", func(ctx context.Context, p *proc) error {
		r, err := p.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: src, CapacityRange: &csi.CapacityRange{RequiredBytes: int64(grown)}})
		if err == nil && r.GetCapacityBytes() != int64(grown) {
			return fmt.Errorf("expanded to %d, want %d", r.GetCapacityBytes(), grown)
		}
		return err
	})
	if e, err := reg0.Volume(opCtx(t), src); err != nil || e.SizeBytes != grown {
		t.Fatalf("index entry after the expand crash: %+v %v", e, err)
	}

	ctx = opCtx(t)
	if _, err := last.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snapResp.GetSnapshot().GetSnapshotId()}); err != nil {
		t.Fatal(err)
	}
	if _, err := last.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: src}); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d crash points survived", n)
	d := startDriver(t, configYAML(), nil)
	reg := registry(t, d)
	var left []string
	for _, pool := range []string{"volumes", "fast"} {
		left = append(left, c1.images(t, pool)...)
		if out := trashLeft(t, d, c1, pool); out != "" {
			left = append(left, "trash: "+out)
		}
	}
	if vols, _, err := reg.Volumes(ctx, "", 100); err != nil || len(vols) > 0 {
		left = append(left, fmt.Sprintf("volume index: %v %v", vols, err))
	}
	if snaps, _, err := reg.Snapshots(ctx, "", "", 100); err != nil || len(snaps) > 0 {
		left = append(left, fmt.Sprintf("snapshot index: %v %v", snaps, err))
	}
	// Name reservations (objects of their own, hashed names, in Basalt's
	// records namespace).
	objs, err := exec.CommandContext(ctx, "rados", "-c", c1.Conf, "-p", "volumes", "-N", "basalt", "ls").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range strings.Fields(string(objs)) {
		for _, prefix := range []string{"basalt.name.", "basalt.snapname.", "basalt.groupname."} {
			if strings.HasPrefix(o, prefix) {
				left = append(left, "name reservation "+o)
			}
		}
	}
	if groups, err := reg.Groups(ctx, 100); err != nil || len(groups) > 0 {
		left = append(left, fmt.Sprintf("group index: %v %v", groups, err))
	}
	for _, k := range []records.Kind{records.KindVolume, records.KindSnapshot, records.KindGroup} {
		if p, err := reg.Pending(ctx, k, 100); err != nil || len(p) > 0 {
			left = append(left, fmt.Sprintf("pending %q: %v %v", k, p, err))
		}
	}
	if len(left) > 0 {
		t.Fatalf("left behind after the crash matrix: %v", left)
	}
}

// opCtx bounds one operation (the matrix as a whole runs longer than tctx).
func opCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}
