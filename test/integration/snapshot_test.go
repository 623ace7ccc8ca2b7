package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/basalt-csi/basalt/pkg/records"
)

// digest reads a whole image (or image@snap) and hashes it.
func (c *cluster) digest(t *testing.T, spec string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "rbd", "-c", c.Conf, "export", "--no-progress", spec, "-").Output()
	if err != nil {
		t.Fatalf("rbd export %s: %v", spec, err)
	}
	sum := sha256.Sum256(out)
	return hex.EncodeToString(sum[:8])
}

// scribble overwrites the start of an image with fresh data.
func (c *cluster) scribble(t *testing.T, spec string) {
	t.Helper()
	c.rbd(t, "bench", "--io-type", "write", "--io-size", "64K", "--io-total", "1M", "--io-pattern", "rand", spec)
}

func snapshot(t *testing.T, d *testDriver, name, volumeID string) *csi.Snapshot {
	t.Helper()
	resp, err := d.ctrl.CreateSnapshot(tctx(t), &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: volumeID})
	if err != nil {
		t.Fatalf("CreateSnapshot(%s): %v", name, err)
	}
	if !resp.GetSnapshot().GetReadyToUse() {
		t.Fatalf("snapshot %s not ready to use", name)
	}
	return resp.GetSnapshot()
}

func createFrom(ctx context.Context, d *testDriver, name string, src *csi.VolumeContentSource, params map[string]string) (*csi.Volume, error) {
	resp, err := d.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name: name, VolumeCapabilities: mountCap(), Parameters: params, VolumeContentSource: src,
	})
	return resp.GetVolume(), err
}

func fromSnapshot(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
}

func fromVolume(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
}

func delSnap(t *testing.T, d *testDriver, id string) {
	t.Helper()
	if _, err := d.ctrl.DeleteSnapshot(tctx(t), &csi.DeleteSnapshotRequest{SnapshotId: id}); err != nil {
		t.Fatalf("DeleteSnapshot(%s): %v", id, err)
	}
}

// trashLeft is what stays in c's pool's RBD trash once deleted volumes'
// images are purged: a delete purges its image in the background, and a
// sweep (run here once, as the controller's sweeper does every 30 s)
// purges what killed processes left.
func trashLeft(t *testing.T, d *testDriver, c *cluster, pool string) string {
	t.Helper()
	if err := d.prov.SweepDeleted(tctx(t)); err != nil {
		t.Fatal(err)
	}
	var out string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		out = strings.TrimSpace(c.rbd(t, "trash", "ls", pool))
		if out == "" || time.Now().After(deadline) {
			return out
		}
	}
}

// leftovers lists what Basalt left in c's pool: images (live or set aside),
// RBD trash entries and snapshot records.
func leftovers(t *testing.T, d *testDriver, c *cluster, pool string) []string {
	t.Helper()
	out := c.images(t, pool)
	if trash := trashLeft(t, d, c, pool); trash != "" {
		out = append(out, "trash: "+trash)
	}
	reg := registry(t, d)
	ctx := tctx(t)
	if snaps, _, err := reg.Snapshots(ctx, "", "", 100); err != nil || len(snaps) > 0 {
		out = append(out, "snapshot index entries")
	}
	for _, list := range []func(context.Context, int) ([]records.KV, error){reg.Deleted, reg.FlattenQueue} {
		if kvs, err := list(ctx, 100); err != nil || len(kvs) > 0 {
			out = append(out, "deferred-work entries")
		}
	}
	if p, err := reg.Pending(ctx, records.KindSnapshot, 10); err != nil || len(p) > 0 {
		out = append(out, "pending snapshots")
	}
	return out
}

// The whole data-management story on real Ceph: snapshot, restore (old
// data), clone (new data), source deleted while its snapshot lives, snapshot
// deleted while restores live, a restore into the other cluster (copy), and
// nothing left once everything is deleted.
func TestSnapshotRestoreCloneLifecycles(t *testing.T) {
	d := startDriver(t, configYAML(), nil)
	ctx := tctx(t)
	pin := map[string]string{"image": golden, "backend": "a-std"}
	src := create(t, d, "snap-src", 0, pin, nil)
	srcImg := "volumes/" + imageOf(t, src)
	old := c1.digest(t, srcImg)

	snap := snapshot(t, d, "snap-1", src.GetVolumeId())
	if again := snapshot(t, d, "snap-1", src.GetVolumeId()); again.GetSnapshotId() != snap.GetSnapshotId() {
		t.Fatalf("CreateSnapshot is not idempotent: %s then %s", snap.GetSnapshotId(), again.GetSnapshotId())
	}
	if snap.GetSizeBytes() != src.GetCapacityBytes() {
		t.Errorf("snapshot size %d, volume %d", snap.GetSizeBytes(), src.GetCapacityBytes())
	}
	other := create(t, d, "snap-other", 0, pin, nil)
	_, err := d.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-1", SourceVolumeId: other.GetVolumeId()})
	wantCode(t, err, codes.AlreadyExists)
	del(t, d, other.GetVolumeId())

	c1.scribble(t, srcImg)
	changed := c1.digest(t, srcImg)
	if changed == old {
		t.Fatal("writing to the source did not change it")
	}

	restored, err := createFrom(ctx, d, "restored-1", fromSnapshot(snap.GetSnapshotId()), pin)
	if err != nil {
		t.Fatal(err)
	}
	if got := c1.digest(t, "volumes/"+imageOf(t, restored)); got != old {
		t.Errorf("restore reads %s, want the snapshot's %s", got, old)
	}
	clone, err := createFrom(ctx, d, "clone-1", fromVolume(src.GetVolumeId()), pin)
	if err != nil {
		t.Fatal(err)
	}
	if got := c1.digest(t, "volumes/"+imageOf(t, clone)); got != changed {
		t.Errorf("clone reads %s, want the source's current %s", got, changed)
	}
	// Same name, other source: AlreadyExists; unknown source: NotFound; smaller: OutOfRange.
	_, err = createFrom(ctx, d, "clone-1", fromSnapshot(snap.GetSnapshotId()), pin)
	wantCode(t, err, codes.AlreadyExists)
	_, err = createFrom(ctx, d, "restore-missing", fromSnapshot(strings.Replace(snap.GetSnapshotId(), snap.GetSnapshotId()[len(snap.GetSnapshotId())-4:], "0000", 1)), pin)
	wantCode(t, err, codes.NotFound)
	_, err = d.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "restore-small", VolumeCapabilities: mountCap(),
		CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}, VolumeContentSource: fromSnapshot(snap.GetSnapshotId())})
	wantCode(t, err, codes.OutOfRange)

	// A source with snapshots (and a trashed clone snapshot) that a client
	// still has open is in use: refused, not set aside under its feet.
	watch := exec.Command("rbd", "-c", c1.Conf, "watch", srcImg)
	stdin, err := watch.StdinPipe() // rbd watch unwatches and exits on a newline
	if err != nil {
		t.Fatal(err)
	}
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(c1.rbd(t, "status", srcImg), "watcher="); {
		if time.Now().After(deadline) {
			t.Fatal("rbd watch did not register")
		}
		time.Sleep(100 * time.Millisecond)
	}
	_, err = d.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: src.GetVolumeId()})
	_, _ = stdin.Write([]byte("\n"))
	_ = watch.Wait()
	wantCode(t, err, codes.FailedPrecondition, "open by")
	for deadline := time.Now().Add(90 * time.Second); strings.Contains(c1.rbd(t, "status", srcImg), "watcher="); {
		if time.Now().After(deadline) {
			t.Fatal("the watcher did not go")
		}
		time.Sleep(time.Second)
	}

	// Independent lifecycles: delete the source, restore again (and into the
	// other cluster, which copies), delete the snapshot, read the restores.
	del(t, d, src.GetVolumeId())
	restored2, err := createFrom(ctx, d, "restored-2", fromSnapshot(snap.GetSnapshotId()), pin)
	if err != nil {
		t.Fatalf("restore after the source was deleted: %v", err)
	}
	copied, err := createFrom(ctx, d, "restored-b", fromSnapshot(snap.GetSnapshotId()), map[string]string{"backend": "b-std"})
	if err != nil {
		t.Fatalf("restore into the other cluster: %v", err)
	}
	if got := c2.digest(t, "volumes/"+imageOf(t, copied)); got != old {
		t.Errorf("copied restore reads %s, want %s", got, old)
	}
	list, err := d.ctrl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SourceVolumeId: src.GetVolumeId()})
	if err != nil || len(list.GetEntries()) != 1 {
		t.Fatalf("ListSnapshots of the deleted source: %v %v", list, err)
	}
	delSnap(t, d, snap.GetSnapshotId())
	delSnap(t, d, snap.GetSnapshotId()) // idempotent
	for _, v := range []*csi.Volume{restored, restored2} {
		if got := c1.digest(t, "volumes/"+imageOf(t, v)); got != old {
			t.Errorf("restore %s reads %s after its snapshot was deleted, want %s", v.GetVolumeId(), got, old)
		}
	}
	if got := c1.digest(t, "volumes/"+imageOf(t, clone)); got != changed {
		t.Errorf("clone reads %s after its source was deleted, want %s", got, changed)
	}
	for _, v := range []*csi.Volume{restored, restored2, clone, copied} {
		del(t, d, v.GetVolumeId())
	}
	if left := append(leftovers(t, d, c1, "volumes"), leftovers(t, d, c2, "volumes")...); len(left) > 0 {
		t.Fatalf("left behind after deleting everything: %v", left)
	}
}

// A chain of clones past maxCloneDepth: every volume reads right, deep ones
// are flattened in the background, and the chain settles within the limit.
// Many restores of one snapshot in parallel all succeed.
func TestCloneDepthFlattensAndParallelRestores(t *testing.T) {
	const maxDepth = 2
	d := startDriver(t, configYAML("maxCloneDepth: 2\n"), nil)
	flatCtx, stop := context.WithCancel(context.Background())
	defer stop()
	go d.prov.RunFlattener(flatCtx, time.Second)
	ctx := tctx(t)
	pin := map[string]string{"image": golden, "backend": "a-std"}
	vols := []*csi.Volume{create(t, d, "chain-0", 0, pin, nil)}
	want := c1.digest(t, "volumes/"+imageOf(t, vols[0]))
	for i := 1; i <= 5; i++ {
		v, err := createFrom(ctx, d, "chain-"+string(rune('0'+i)), fromVolume(vols[i-1].GetVolumeId()), pin)
		if err != nil {
			t.Fatalf("clone %d: %v", i, err)
		}
		vols = append(vols, v)
		if got := c1.digest(t, "volumes/"+imageOf(t, v)); got != want {
			t.Fatalf("clone %d reads %s, want %s", i, got, want)
		}
	}
	depth := func(v *csi.Volume) int {
		n, img := 0, imageOf(t, v)
		for pool := "volumes"; ; n++ {
			i := info(t, c1, pool, img)
			if i.Parent == nil {
				return n
			}
			pool, img = i.Parent.Pool, i.Parent.Image
		}
	}
	deadline := time.Now().Add(2 * time.Minute)
	for _, v := range vols {
		for depth(v) > maxDepth {
			if time.Now().After(deadline) {
				t.Fatalf("%s still %d deep after the flattens should have settled", v.GetVolumeId(), depth(v))
			}
			time.Sleep(500 * time.Millisecond)
		}
		if got := c1.digest(t, "volumes/"+imageOf(t, v)); got != want {
			t.Errorf("%s reads %s after flattening, want %s", v.GetVolumeId(), got, want)
		}
	}

	// Many clones of one volume at once: each goes through its own
	// temporary snapshot, no lock, no error.
	const nc = 8
	clones := make([]*csi.Volume, nc)
	cerrs := make([]error, nc)
	var cwg sync.WaitGroup
	for i := 0; i < nc; i++ {
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			clones[i], cerrs[i] = createFrom(ctx, d, "par-clone-"+string(rune('a'+i)), fromVolume(vols[0].GetVolumeId()), pin)
		}()
	}
	cwg.Wait()
	for i, err := range cerrs {
		if err != nil {
			t.Errorf("parallel clone %d: %v", i, err)
		} else if got := c1.digest(t, "volumes/"+imageOf(t, clones[i])); got != want {
			t.Errorf("parallel clone %d reads %s, want %s", i, got, want)
		}
	}
	for _, v := range clones {
		if v != nil {
			del(t, d, v.GetVolumeId())
		}
	}

	snap := snapshot(t, d, "par-snap", vols[0].GetVolumeId())
	const n = 12
	var wg sync.WaitGroup
	errs := make([]error, n)
	restores := make([]*csi.Volume, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			restores[i], errs[i] = createFrom(ctx, d, "par-"+string(rune('a'+i)), fromSnapshot(snap.GetSnapshotId()), pin)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("parallel restore %d: %v", i, err)
		}
	}
	delSnap(t, d, snap.GetSnapshotId())
	for _, v := range append(restores, vols...) {
		if v != nil {
			del(t, d, v.GetVolumeId())
		}
	}
	if left := leftovers(t, d, c1, "volumes"); len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
}

// A volume group snapshot is one RBD group snapshot: each member restores
// to its volume's content at that point, members are listed with their
// group, cannot be deleted alone, outlive their source volumes, and go with
// the group. Volumes of two pools of one cluster are grouped (a StatefulSet's
// claims land on whichever backends the scheduler picks); volumes of two
// clusters cannot be.
func TestVolumeGroupSnapshot(t *testing.T) {
	d := startDriver(t, configYAML(), nil)
	gc := csi.NewGroupControllerClient(d.conn)
	ctx := tctx(t)
	pin := map[string]string{"image": golden, "backend": "a-std"}
	a, b := create(t, d, "grp-a", 0, pin, nil), create(t, d, "grp-b", 0, map[string]string{"image": golden, "backend": "a-fast"}, nil)
	imgA, imgB := "volumes/"+imageOf(t, a), "fast/"+imageOf(t, b)
	c1.scribble(t, imgA)
	c1.scribble(t, imgB)
	wantA, wantB := c1.digest(t, imgA), c1.digest(t, imgB)

	req := &csi.CreateVolumeGroupSnapshotRequest{Name: "grp-1", SourceVolumeIds: []string{a.GetVolumeId(), b.GetVolumeId()}}
	resp, err := gc.CreateVolumeGroupSnapshot(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	grp := resp.GetGroupSnapshot()
	if len(grp.GetSnapshots()) != 2 || !grp.GetReadyToUse() {
		t.Fatalf("group snapshot: %v", grp)
	}
	if again, err := gc.CreateVolumeGroupSnapshot(ctx, req); err != nil || again.GetGroupSnapshot().GetGroupSnapshotId() != grp.GetGroupSnapshotId() {
		t.Fatalf("not idempotent: %v %v", again, err)
	}
	other := create(t, d, "grp-other", 0, map[string]string{"backend": "b-std"}, nil)
	_, err = gc.CreateVolumeGroupSnapshot(ctx, &csi.CreateVolumeGroupSnapshotRequest{Name: "grp-x", SourceVolumeIds: []string{a.GetVolumeId(), other.GetVolumeId()}})
	wantCode(t, err, codes.InvalidArgument, other.GetVolumeId())
	del(t, d, other.GetVolumeId())

	c1.scribble(t, imgA)
	c1.scribble(t, imgB)
	want := map[string]string{a.GetVolumeId(): wantA, b.GetVolumeId(): wantB}
	for _, s := range grp.GetSnapshots() {
		if s.GetGroupSnapshotId() != grp.GetGroupSnapshotId() {
			t.Errorf("member %s does not name its group", s.GetSnapshotId())
		}
		_, err := d.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: s.GetSnapshotId()})
		wantCode(t, err, codes.InvalidArgument, grp.GetGroupSnapshotId())
		l, err := d.ctrl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: s.GetSnapshotId()})
		if err != nil || len(l.GetEntries()) != 1 {
			t.Fatalf("member not listed: %v %v", l, err)
		}
	}
	_, err = gc.GetVolumeGroupSnapshot(ctx, &csi.GetVolumeGroupSnapshotRequest{GroupSnapshotId: grp.GetGroupSnapshotId(), SnapshotIds: []string{grp.GetSnapshots()[0].GetSnapshotId()}})
	wantCode(t, err, codes.InvalidArgument)

	// The source volumes go first; the members still restore.
	del(t, d, a.GetVolumeId())
	del(t, d, b.GetVolumeId())
	var restores []*csi.Volume
	for i, s := range grp.GetSnapshots() {
		v, err := createFrom(ctx, d, "grp-restore-"+string(rune('a'+i)), fromSnapshot(s.GetSnapshotId()), pin)
		if err != nil {
			t.Fatalf("restoring member %s: %v", s.GetSnapshotId(), err)
		}
		if got := c1.digest(t, "volumes/"+imageOf(t, v)); got != want[s.GetSourceVolumeId()] {
			t.Errorf("member of %s restores to %s, want %s", s.GetSourceVolumeId(), got, want[s.GetSourceVolumeId()])
		}
		restores = append(restores, v)
	}
	var ids []string
	for _, s := range grp.GetSnapshots() {
		ids = append(ids, s.GetSnapshotId())
	}
	if _, err := gc.DeleteVolumeGroupSnapshot(ctx, &csi.DeleteVolumeGroupSnapshotRequest{GroupSnapshotId: grp.GetGroupSnapshotId(), SnapshotIds: ids}); err != nil {
		t.Fatal(err)
	}
	if _, err := gc.DeleteVolumeGroupSnapshot(ctx, &csi.DeleteVolumeGroupSnapshotRequest{GroupSnapshotId: grp.GetGroupSnapshotId()}); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	_, err = gc.GetVolumeGroupSnapshot(ctx, &csi.GetVolumeGroupSnapshotRequest{GroupSnapshotId: grp.GetGroupSnapshotId()})
	wantCode(t, err, codes.NotFound)
	for _, v := range restores {
		del(t, d, v.GetVolumeId())
	}
	left := append(leftovers(t, d, c1, "volumes"), leftovers(t, d, c1, "fast")...)
	for _, pool := range []string{"volumes", "fast"} {
		if groups := strings.TrimSpace(c1.rbd(t, "group", "ls", pool)); groups != "" {
			left = append(left, pool+" groups: "+groups)
		}
	}
	if len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
}
