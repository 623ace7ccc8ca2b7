package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/basalt-csi/basalt/pkg/backend"
	"github.com/basalt-csi/basalt/pkg/provision"
	"github.com/basalt-csi/basalt/pkg/records"
	"github.com/basalt-csi/basalt/pkg/volumeid"
)

func wantCode(t *testing.T, err error, code codes.Code, mentions ...string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("got %v, want code %v", err, code)
	}
	for _, m := range mentions {
		if !strings.Contains(status.Convert(err).Message(), m) {
			t.Errorf("message %q does not mention %q", status.Convert(err).Message(), m)
		}
	}
}

func create(t *testing.T, d *testDriver, name string, size int64, params map[string]string, topo *csi.TopologyRequirement) *csi.Volume {
	t.Helper()
	resp, err := d.ctrl.CreateVolume(tctx(t), &csi.CreateVolumeRequest{
		Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: mountCap(), Parameters: params, AccessibilityRequirements: topo,
	})
	if err != nil {
		t.Fatalf("CreateVolume(%s): %v", name, err)
	}
	return resp.GetVolume()
}

func del(t *testing.T, d *testDriver, id string) {
	t.Helper()
	if _, err := d.ctrl.DeleteVolume(tctx(t), &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatalf("DeleteVolume(%s): %v", id, err)
	}
}

type rbdInfo struct {
	Size   int64 `json:"size"`
	Parent *struct {
		Pool, Image, Snapshot string
	} `json:"parent"`
}

func info(t *testing.T, c *cluster, pool, image string) rbdInfo {
	var i rbdInfo
	if err := json.Unmarshal([]byte(c.rbd(t, "info", "--format", "json", pool+"/"+image)), &i); err != nil {
		t.Fatal(err)
	}
	return i
}

func imageOf(t *testing.T, v *csi.Volume) string {
	id, err := volumeid.Parse(v.GetVolumeId())
	if err != nil {
		t.Fatal(err)
	}
	return id.ImageName()
}

func zoneOf(v *csi.Volume) string {
	return v.GetAccessibleTopology()[0].GetSegments()["topology.rbd.basalt.dev/zone"]
}

func TestCreateFromImageClonesInRequestedZone(t *testing.T) {
	d := startDriver(t, configYAML(), nil)
	params := map[string]string{"image": golden, "csi.storage.k8s.io/pvc/name": "data", "csi.storage.k8s.io/pvc/namespace": "ns1"}
	v := create(t, d, "pvc-clone-1", gib, params, zoneReq("zone-a"))
	if zoneOf(v) != "zone-a" || v.GetCapacityBytes() != gib {
		t.Fatalf("volume %+v: want zone-a, 1 GiB", v)
	}
	pool := v.GetVolumeContext()["pool"]
	i := info(t, c1, pool, imageOf(t, v))
	if i.Size != gib {
		t.Errorf("image size %d, want %d", i.Size, gib)
	}
	if i.Parent == nil || i.Parent.Pool != "images" || i.Parent.Image != "golden" || i.Parent.Snapshot != "v1" {
		t.Errorf("image parent = %+v, want images/golden@v1", i.Parent)
	}
	md := c1.rbd(t, "image-meta", "list", "--format", "json", pool+"/"+imageOf(t, v))
	for _, want := range []string{`"basalt.source":"images/golden@v1"`, `"basalt.pvc-name":"data"`, `"basalt.pvc-namespace":"ns1"`, `"basalt.source-method":"clone"`} {
		if !strings.Contains(md, want) {
			t.Errorf("metadata %s lacks %s", md, want)
		}
	}

	// Same request again: same volume. Other size: AlreadyExists.
	again := create(t, d, "pvc-clone-1", gib, params, zoneReq("zone-a"))
	if again.GetVolumeId() != v.GetVolumeId() {
		t.Fatalf("retry returned %s, want %s", again.GetVolumeId(), v.GetVolumeId())
	}
	_, err := d.ctrl.CreateVolume(tctx(t), &csi.CreateVolumeRequest{
		Name: "pvc-clone-1", CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * gib},
		VolumeCapabilities: mountCap(), Parameters: params,
	})
	wantCode(t, err, codes.AlreadyExists, "pvc-clone-1")

	del(t, d, v.GetVolumeId())
	if imgs := c1.images(t, pool); len(imgs) != 0 {
		t.Fatalf("images left after delete: %v", imgs)
	}
	del(t, d, v.GetVolumeId()) // idempotent
	_, err = d.ctrl.ValidateVolumeCapabilities(tctx(t), &csi.ValidateVolumeCapabilitiesRequest{VolumeId: v.GetVolumeId(), VolumeCapabilities: mountCap()})
	wantCode(t, err, codes.NotFound)
	// The name is free again and yields a new volume.
	v2 := create(t, d, "pvc-clone-1", gib, params, zoneReq("zone-a"))
	if v2.GetVolumeId() == v.GetVolumeId() {
		t.Fatal("a deleted volume's ID was handed out again")
	}
	del(t, d, v2.GetVolumeId())
}

func TestCopyToOtherClusterMatchesImage(t *testing.T) {
	d := startDriver(t, configYAML(), nil)
	v := create(t, d, "pvc-copy-1", gib, map[string]string{"image": golden}, zoneReq("zone-b"))
	defer del(t, d, v.GetVolumeId())
	if zoneOf(v) != "zone-b" || v.GetVolumeContext()["backend"] != "b-std" {
		t.Fatalf("volume %+v: want zone-b on b-std", v)
	}
	img := imageOf(t, v)
	i := info(t, c2, "volumes", img)
	if i.Parent != nil || i.Size != gib {
		t.Fatalf("copied image: %+v, want no parent and 1 GiB", i)
	}
	// Read the filesystem straight from the copied image.
	file := filepath.Join(t.TempDir(), "copy.img")
	c2.rbd(t, "export", "volumes/"+img, file)
	out, err := exec.Command("debugfs", "-R", "cat /golden.txt", file).Output()
	if err != nil {
		t.Fatalf("debugfs: %v", err)
	}
	if strings.TrimSpace(string(out)) != goldenText {
		t.Fatalf("golden.txt in the copy = %q", out)
	}
	st, _ := os.Stat(file)
	if st.Size() != gib {
		t.Fatalf("exported size %d", st.Size())
	}
}

func TestSchedulerSpreadsAndFiltersByCapability(t *testing.T) {
	d := startDriver(t, configYAML(), nil)
	fast := create(t, d, "pvc-fast", gib, map[string]string{"capability.tier": "fast"}, nil)
	defer del(t, d, fast.GetVolumeId())
	if fast.GetVolumeContext()["backend"] != "a-fast" {
		t.Fatalf("tier=fast landed on %s", fast.GetVolumeContext()["backend"])
	}
	pinned := create(t, d, "pvc-pinned", gib, map[string]string{"backend": "b-std"}, nil)
	defer del(t, d, pinned.GetVolumeId())
	if pinned.GetVolumeContext()["backend"] != "b-std" {
		t.Fatalf("pinned to b-std landed on %s", pinned.GetVolumeContext()["backend"])
	}
	// A burst of equal requests in zone-a spreads over both zone-a backends,
	// because each placement is charged locally before the next one.
	seen := map[string]int{}
	for i := 0; i < 4; i++ {
		v := create(t, d, "pvc-burst-"+string(rune('a'+i)), 8*gib, nil, zoneReq("zone-a"))
		defer del(t, d, v.GetVolumeId())
		seen[v.GetVolumeContext()["backend"]]++
	}
	if seen["a-std"] == 0 || seen["a-fast"] == 0 {
		t.Fatalf("burst placements %v did not spread over a-std and a-fast", seen)
	}
}

func TestNoCandidateIsResourceExhausted(t *testing.T) {
	d := startDriver(t, configYAML(), nil)
	_, err := d.ctrl.CreateVolume(tctx(t), &csi.CreateVolumeRequest{
		Name: "pvc-huge", CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 50}, VolumeCapabilities: mountCap(),
	})
	wantCode(t, err, codes.ResourceExhausted, "a-std", "a-fast", "b-std", "capacity")
	_, err = d.ctrl.CreateVolume(tctx(t), &csi.CreateVolumeRequest{
		Name: "pvc-nozone", VolumeCapabilities: mountCap(), AccessibilityRequirements: zoneReq("zone-z"),
	})
	wantCode(t, err, codes.ResourceExhausted, "zone")
	_, err = d.ctrl.CreateVolume(tctx(t), &csi.CreateVolumeRequest{
		Name: "pvc-gold", VolumeCapabilities: mountCap(), Parameters: map[string]string{"capability.tier": "gold"},
	})
	wantCode(t, err, codes.ResourceExhausted, "capabilities")
	// Nothing may be left behind by refused requests.
	for _, p := range []string{"volumes", "fast"} {
		if imgs := c1.images(t, p); len(imgs) != 0 {
			t.Fatalf("images left in %s: %v", p, imgs)
		}
	}
}

func TestGetCapacityPerZoneShrinks(t *testing.T) {
	d := startDriver(t, configYAML(), nil)
	capOf := func(zone string) int64 {
		resp, err := d.ctrl.GetCapacity(tctx(t), &csi.GetCapacityRequest{
			VolumeCapabilities: mountCap(),
			AccessibleTopology: &csi.Topology{Segments: map[string]string{"topology.rbd.basalt.dev/zone": zone}},
		})
		if err != nil {
			t.Fatal(err)
		}
		if max := resp.GetMaximumVolumeSize().GetValue(); max > resp.GetAvailableCapacity() || (max <= 0) != (resp.GetAvailableCapacity() == 0) {
			t.Fatalf("zone %s: maximum %v vs available %d", zone, resp.GetMaximumVolumeSize(), resp.GetAvailableCapacity())
		}
		return resp.GetAvailableCapacity()
	}
	a0, b0 := capOf("zone-a"), capOf("zone-b")
	if a0 <= 0 || b0 <= 0 {
		t.Fatalf("capacity zone-a %d zone-b %d", a0, b0)
	}
	v := create(t, d, "pvc-cap", 10*gib, nil, zoneReq("zone-b"))
	defer del(t, d, v.GetVolumeId())
	if b1 := capOf("zone-b"); b1 > b0-10*gib {
		t.Fatalf("zone-b capacity %d did not shrink by 10 GiB from %d", b1, b0)
	}
	if z := capOf("zone-z"); z != 0 {
		t.Fatalf("unknown zone has capacity %d", z)
	}
}

func TestInvalidRequests(t *testing.T) {
	d := startDriver(t, configYAML(), nil)
	ctx := tctx(t)
	cases := []struct {
		req      *csi.CreateVolumeRequest
		code     codes.Code
		mentions []string
	}{
		{&csi.CreateVolumeRequest{VolumeCapabilities: mountCap()}, codes.InvalidArgument, []string{"name"}},
		{&csi.CreateVolumeRequest{Name: "x"}, codes.InvalidArgument, []string{"volume_capabilities"}},
		{&csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: mountCap(), Parameters: map[string]string{"colour": "red"}}, codes.InvalidArgument, []string{`"colour"`}},
		{&csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: mountCap(), Parameters: map[string]string{"image": "golden"}}, codes.InvalidArgument, []string{"pool/name@snap"}},
		{&csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: mountCap(), Parameters: map[string]string{"backend": "nope"}}, codes.InvalidArgument, []string{"nope"}},
		{&csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: mountCap(), Parameters: map[string]string{"image": "images/missing@v1"}}, codes.NotFound, []string{"images/missing@v1"}},
		{&csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: mountCap(), CapacityRange: &csi.CapacityRange{RequiredBytes: 3 << 20, LimitBytes: 2 << 20}}, codes.OutOfRange, nil},
		{&csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: mountCap(), Parameters: map[string]string{"image": golden}, CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20}}, codes.OutOfRange, []string{"smaller than its source image"}},
		{&csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: []*csi.VolumeCapability{{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER}}}}, codes.InvalidArgument, []string{"block"}},
	}
	for _, tc := range cases {
		_, err := d.ctrl.CreateVolume(ctx, tc.req)
		wantCode(t, err, tc.code, tc.mentions...)
	}
	// A range that holds no whole MiB is served with the exact size asked for.
	exact, err := d.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "exact", VolumeCapabilities: mountCap(), Parameters: map[string]string{"backend": "a-std"},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 2<<20 + 1, LimitBytes: 2<<20 + 100}})
	if err != nil || exact.GetVolume().GetCapacityBytes() != 2<<20+1 {
		t.Fatalf("range without a whole MiB: %v, %v", exact, err)
	}
	if got := info(t, c1, "volumes", imageOf(t, exact.GetVolume())).Size; got != 2<<20+1 {
		t.Errorf("image size %d, want %d", got, 2<<20+1)
	}
	del(t, d, exact.GetVolume().GetVolumeId())
	// IDs: malformed and well-formed-but-unknown.
	unknown, _ := volumeid.New(c1.FSID, 1)
	for _, id := range []string{"garbage", unknown.String(), "bsl1.00000000000000000000000000000000.1." + strings.Repeat("a", 32)} {
		_, err := d.ctrl.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: id, VolumeCapabilities: mountCap()})
		wantCode(t, err, codes.NotFound)
		_, err = d.ctrl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id})
		wantCode(t, err, codes.NotFound)
		if _, err := d.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Errorf("DeleteVolume(%q) = %v, want success", id, err)
		}
	}
	_, err = d.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: "nonsense"})
	wantCode(t, err, codes.Aborted)
	// A protected-snapshot requirement: an unprotected snapshot is refused.
	c1.rbd(t, "snap", "create", "images/golden@raw")
	defer c1.rbd(t, "snap", "rm", "images/golden@raw")
	_, err = d.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: mountCap(), Parameters: map[string]string{"image": "images/golden@raw"}})
	wantCode(t, err, codes.FailedPrecondition, "protect")
}

func TestConcurrentSameNameCreatesOneImage(t *testing.T) {
	d := startDriver(t, configYAML(), nil)
	var wg sync.WaitGroup
	ids := make([]string, 8)
	errs := make([]error, 8)
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := d.ctrl.CreateVolume(tctx(t), &csi.CreateVolumeRequest{
				Name: "pvc-race", CapacityRange: &csi.CapacityRange{RequiredBytes: gib},
				VolumeCapabilities: mountCap(), Parameters: map[string]string{"image": golden}, AccessibilityRequirements: zoneReq("zone-a"),
			})
			ids[i], errs[i] = resp.GetVolume().GetVolumeId(), err
		}()
	}
	wg.Wait()
	for i := range ids {
		if errs[i] != nil || ids[i] != ids[0] {
			t.Fatalf("call %d: id %s err %v; call 0: %s", i, ids[i], errs[i], ids[0])
		}
	}
	defer del(t, d, ids[0])
	n := len(c1.images(t, "volumes")) + len(c1.images(t, "fast"))
	if n != 1 {
		t.Fatalf("%d images for one name", n)
	}
}

func TestListVolumesPaginates(t *testing.T) {
	d := startDriver(t, configYAML(), nil)
	want := map[string]bool{}
	for i := 0; i < 5; i++ {
		v := create(t, d, "pvc-list-"+string(rune('a'+i)), 64<<20, nil, nil)
		defer del(t, d, v.GetVolumeId())
		want[v.GetVolumeId()] = true
	}
	got := map[string]bool{}
	token, pages := "", 0
	for {
		resp, err := d.ctrl.ListVolumes(tctx(t), &csi.ListVolumesRequest{MaxEntries: 2, StartingToken: token})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		if len(resp.GetEntries()) > 2 {
			t.Fatalf("page of %d entries", len(resp.GetEntries()))
		}
		for _, e := range resp.GetEntries() {
			if got[e.GetVolume().GetVolumeId()] {
				t.Fatalf("volume listed twice: %s", e.GetVolume().GetVolumeId())
			}
			got[e.GetVolume().GetVolumeId()] = true
		}
		if token = resp.GetNextToken(); token == "" {
			break
		}
	}
	for id := range want {
		if !got[id] {
			t.Errorf("volume %s not listed", id)
		}
	}
	if pages < 3 {
		t.Errorf("%d pages for %d volumes at 2 per page", pages, len(got))
	}
}

// failingCluster makes Clone fail after creating a partial image, the way a
// backend dying mid-create would, to exercise revert and reschedule.
type failingCluster struct {
	backend.Cluster
	mu    sync.Mutex
	calls int
}

func (f *failingCluster) Unwrap() backend.Cluster { return f.Cluster }

func (f *failingCluster) Clone(ctx context.Context, spec backend.ImageSpec, dst string) error {
	f.mu.Lock()
	f.calls++
	f.mu.Unlock()
	if err := f.Cluster.Clone(ctx, spec, dst); err != nil {
		return err
	}
	return errors.New("injected failure after the clone was made")
}

func TestFailedCreateIsRevertedAndRescheduled(t *testing.T) {
	var bad *failingCluster
	d := startDriver(t, configYAML(), func(name string, c backend.Cluster) backend.Cluster {
		if name == "a-std" {
			bad = &failingCluster{Cluster: c}
			return bad
		}
		return c
	})
	// Pinned to the failing backend: one attempt, then an error, and the
	// clone it made and the name reservation are gone.
	_, err := d.ctrl.CreateVolume(tctx(t), &csi.CreateVolumeRequest{
		Name: "pvc-resched", CapacityRange: &csi.CapacityRange{RequiredBytes: gib}, VolumeCapabilities: mountCap(),
		Parameters: map[string]string{"image": golden, "backend": "a-std"},
	})
	wantCode(t, err, codes.Internal, "a-std", "injected failure")
	if imgs := c1.images(t, "volumes"); len(imgs) != 0 {
		t.Fatalf("the failed clone was left behind: %v", imgs)
	}
	// Unpinned in zone-a: a-std (no reserve, so most free) is tried first,
	// fails, and the volume is rescheduled to a-fast.
	v := create(t, d, "pvc-resched-2", gib, map[string]string{"image": golden}, zoneReq("zone-a"))
	defer del(t, d, v.GetVolumeId())
	if bad.calls != 2 {
		t.Fatalf("failing backend saw %d clones, want 2", bad.calls)
	}
	if v.GetVolumeContext()["backend"] != "a-fast" {
		t.Fatalf("rescheduled volume landed on %s", v.GetVolumeContext()["backend"])
	}
	if imgs := c1.images(t, "volumes"); len(imgs) != 0 {
		t.Fatalf("the failed clone was left behind: %v", imgs)
	}
	// The pinned name was released: retrying it with another backend works.
	v2 := create(t, d, "pvc-resched", gib, map[string]string{"image": golden, "backend": "a-fast"}, nil)
	del(t, d, v2.GetVolumeId())
}

// A controller that died mid-create left a reservation and a clone; Recover
// (run at start) undoes both, and the name yields a fresh volume afterwards.
func TestRecoverUndoesInterruptedCreate(t *testing.T) {
	d := startDriver(t, configYAML(), nil)
	regCluster, err := d.mgr.Registry()
	if err != nil {
		t.Fatal(err)
	}
	reg := records.NewRegistry(regCluster)
	ctx := tctx(t)
	res, created, err := reg.Reserve(ctx, records.Reservation{Name: "pvc-crashed", UUID: volumeid.NewUUID(), State: records.StateCreating, SizeBytes: uint64(gib)})
	if err != nil || !created {
		t.Fatalf("reserve: %v %v", created, err)
	}
	res.Backend = "a-std"
	if err := reg.Save(ctx, &res); err != nil {
		t.Fatal(err)
	}
	c1.rbd(t, "clone", golden, "volumes/basalt-"+res.UUID)
	// Crashed between "index volume" and "mark ready": the index entry
	// exists, the reservation does not name the volume yet.
	cl, _, _ := d.mgr.Get("a-std")
	ghost, _ := volumeid.New(cl.ClusterID(), cl.PoolID())
	ghost.UUID = res.UUID
	if err := reg.IndexVolume(ctx, records.VolumeEntry{VolumeID: ghost.String(), Name: "pvc-crashed", Backend: "a-std", SizeBytes: uint64(gib)}); err != nil {
		t.Fatal(err)
	}

	if n, err := d.prov.Recover(ctx, time.Hour); err != nil || n != 0 {
		t.Fatalf("a young reservation was undone: %d %v", n, err)
	}
	if n, err := d.prov.Recover(ctx, 0); err != nil || n != 1 {
		t.Fatalf("Recover = %d, %v; want 1 undone", n, err)
	}
	if imgs := c1.images(t, "volumes"); len(imgs) != 0 {
		t.Fatalf("clone of the interrupted create left: %v", imgs)
	}
	if _, err := reg.Volume(ctx, ghost.String()); !errors.Is(err, records.ErrNotFound) {
		t.Fatalf("index entry of the interrupted create left (a phantom volume): %v", err)
	}
	if _, err := reg.Reservation(ctx, records.KindVolume, "pvc-crashed"); !errors.Is(err, records.ErrNotFound) {
		t.Fatalf("reservation left: %v", err)
	}
	if p, _ := reg.Pending(ctx, records.KindVolume, 10); len(p) != 0 {
		t.Fatalf("pending left: %v", p)
	}
	v := create(t, d, "pvc-crashed", gib, nil, nil)
	del(t, d, v.GetVolumeId())
	if p, _ := reg.Pending(ctx, records.KindVolume, 10); len(p) != 0 {
		t.Fatalf("a finished create is still pending: %v", p)
	}
}

func statusOf(err error) (codes.Code, string) {
	st := status.Convert(err)
	return st.Code(), st.Message()
}

// undoFailingCluster fails a clone after making it and, while armed, fails
// the removal that reverts it: a revert that did not complete.
type undoFailingCluster struct {
	backend.Cluster
	armed atomic.Bool
}

func (f *undoFailingCluster) Unwrap() backend.Cluster { return f.Cluster }

func (f *undoFailingCluster) Clone(ctx context.Context, spec backend.ImageSpec, dst string) error {
	if err := f.Cluster.Clone(ctx, spec, dst); err != nil || !f.armed.Load() {
		return err
	}
	return errors.New("injected failure after the clone was made")
}

func (f *undoFailingCluster) RemoveImage(ctx context.Context, name string) error {
	if f.armed.Load() {
		return errors.New("injected failure of the revert")
	}
	return f.Cluster.RemoveImage(ctx, name)
}

// A create whose revert fails must not reschedule elsewhere and forget what
// it left: it answers a retryable error and keeps the reservation, and the
// CO's retry cleans up and succeeds, leaving exactly one image.
func TestFailedRevertStopsReschedulingAndIsRetried(t *testing.T) {
	bad := &undoFailingCluster{}
	bad.armed.Store(true)
	d := startDriver(t, configYAML(), func(name string, c backend.Cluster) backend.Cluster {
		if name == "a-std" {
			bad.Cluster = c
			return bad
		}
		return c
	})
	req := &csi.CreateVolumeRequest{Name: "pvc-undo", CapacityRange: &csi.CapacityRange{RequiredBytes: gib}, VolumeCapabilities: mountCap(),
		Parameters: map[string]string{"image": golden}, AccessibilityRequirements: zoneReq("zone-a")}
	_, err := d.ctrl.CreateVolume(tctx(t), req)
	wantCode(t, err, codes.Unavailable, "a-std", "clean-up")
	if imgs := c1.images(t, "fast"); len(imgs) != 0 {
		t.Fatalf("rescheduled after a failed revert: %v on a-fast", imgs)
	}
	if p, _ := registry(t, d).Pending(tctx(t), records.KindVolume, 10); len(p) != 1 {
		t.Fatalf("the reservation recording the leftover is gone: pending %v", p)
	}
	bad.armed.Store(false)
	resp, err := d.ctrl.CreateVolume(tctx(t), req)
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	all := append(c1.images(t, "volumes"), c1.images(t, "fast")...)
	if len(all) != 1 || all[0] != imageOf(t, resp.GetVolume()) {
		t.Fatalf("images after the retry: %v, want only %s", all, imageOf(t, resp.GetVolume()))
	}
	del(t, d, resp.GetVolume().GetVolumeId())
}

// Two controllers: a create another controller is working on is not
// resumed under its feet (Aborted, retry), and once it is stale it is taken
// over under a new UUID, so the lingering one can neither clobber nor
// release the new volume's records.
func TestSecondControllerDoesNotResumeALiveCreate(t *testing.T) {
	a := startDriver(t, configYAML(), nil)
	b := startDriver(t, configYAML(), nil)
	a.prov.Instance, b.prov.Instance = "controller@a", "controller@b"
	ctx := tctx(t)
	reg := registry(t, a)
	uuid := volumeid.NewUUID()
	// a is in the middle of creating pvc-two: reserved, placed, cloned.
	res, created, err := reg.Reserve(ctx, records.Reservation{Name: "pvc-two", UUID: uuid, State: records.StateCreating,
		SizeBytes: uint64(gib), Params: map[string]string{"image": golden, "backend": "a-std"}, Owner: "controller@a"})
	if err != nil || !created {
		t.Fatal(created, err)
	}
	res.Backend = "a-std"
	if err := reg.Save(ctx, &res); err != nil {
		t.Fatal(err)
	}
	c1.rbd(t, "clone", golden, "volumes/basalt-"+uuid)
	req := &csi.CreateVolumeRequest{Name: "pvc-two", CapacityRange: &csi.CapacityRange{RequiredBytes: gib}, VolumeCapabilities: mountCap(),
		Parameters: map[string]string{"image": golden, "backend": "a-std"}}
	_, err = b.ctrl.CreateVolume(ctx, req)
	wantCode(t, err, codes.Aborted, "another controller", "controller@a")

	old := provision.TakeoverGrace
	provision.TakeoverGrace = time.Second
	defer func() { provision.TakeoverGrace = old }()
	time.Sleep(1200 * time.Millisecond)
	resp, err := b.ctrl.CreateVolume(ctx, req)
	if err != nil {
		t.Fatalf("takeover of a stale create: %v", err)
	}
	if strings.HasSuffix(resp.GetVolume().GetVolumeId(), uuid) {
		t.Fatal("the takeover reused the other controller's UUID")
	}
	// a lingers: its release of "its" reservation must not touch b's.
	if err := reg.Release(ctx, records.KindVolume, "pvc-two", uuid); err != nil {
		t.Fatal(err)
	}
	again, err := a.ctrl.CreateVolume(ctx, req)
	if err != nil || again.GetVolume().GetVolumeId() != resp.GetVolume().GetVolumeId() {
		t.Fatalf("after the old owner's release: %v %v", again, err)
	}
	if imgs := c1.images(t, "volumes"); len(imgs) != 1 || imgs[0] != imageOf(t, resp.GetVolume()) {
		t.Fatalf("images: %v, want only the taken-over volume's", imgs)
	}
	del(t, b, resp.GetVolume().GetVolumeId())
}

// Two controllers serve the same backends and get a burst of creates,
// publishes, unpublishes and deletes of overlapping names and volumes (each
// through both): every name ends with exactly one volume both agree on, a
// single-node-writer volume published to two nodes at once through the two
// controllers lands on exactly one, unpublishes and deletes through either
// succeed, and nothing is left.
func TestTwoControllersBurst(t *testing.T) {
	a := startDriver(t, configYAML(), nil)
	b := startDriver(t, configYAML(), nil)
	a.prov.Instance, b.prov.Instance = "controller@a", "controller@b"
	ctrls := []*testDriver{a, b}
	const n = 8
	ids := make([][2]string, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		for j, d := range ctrls {
			wg.Add(1)
			go func() {
				defer wg.Done()
				req := &csi.CreateVolumeRequest{Name: fmt.Sprintf("pvc-two-burst-%d", i), VolumeCapabilities: mountCap(),
					Parameters: map[string]string{"image": golden}, AccessibilityRequirements: zoneReq("zone-a")}
				deadline := time.Now().Add(90 * time.Second)
				for {
					resp, err := d.ctrl.CreateVolume(tctx(t), req)
					if err == nil {
						ids[i][j] = resp.GetVolume().GetVolumeId()
						return
					}
					if c := status.Code(err); (c != codes.Aborted && c != codes.Unavailable) || time.Now().After(deadline) {
						t.Errorf("create %s through controller %d: %v", req.Name, j, err)
						return
					}
					time.Sleep(200 * time.Millisecond)
				}
			}()
		}
	}
	wg.Wait()
	for i, pair := range ids {
		if pair[0] == "" || pair[0] != pair[1] {
			t.Fatalf("name %d: the controllers answered %q and %q", i, pair[0], pair[1])
		}
	}
	if imgs := append(c1.images(t, "volumes"), c1.images(t, "fast")...); len(imgs) != n {
		t.Fatalf("%d images for %d names: %v", len(imgs), n, imgs)
	}
	// Each controller publishes every volume to its own node at once.
	nodes := []string{"two-burst-a", "two-burst-b"}
	for _, node := range nodes {
		must(t, registry(t, a).RegisterNode(tctx(t), records.Node{ID: node, Zone: "zone-a"}))
	}
	retryAborted := func(f func() error) error {
		for k := 0; ; k++ {
			err := f()
			if status.Code(err) != codes.Aborted || k == 50 {
				return err
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	won := make([][2]bool, n)
	vc := capFor(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, false)
	for i := range ids {
		for j, d := range ctrls {
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := retryAborted(func() error { _, err := publish(tctx(t), d.ctrl, ids[i][0], nodes[j], vc, false); return err })
				switch status.Code(err) {
				case codes.OK:
					won[i][j] = true
				case codes.FailedPrecondition: // published to the other node
				default:
					t.Errorf("publish %s to %s: %v", ids[i][0], nodes[j], err)
				}
			}()
		}
	}
	wg.Wait()
	for i := range ids {
		if won[i][0] == won[i][1] {
			t.Errorf("volume %s: publishes to both nodes succeeded=%v, want exactly one", ids[i][0], won[i][0])
		}
		if got := publishedNodes(t, a.ctrl, ids[i][0]); len(got) != 1 {
			t.Errorf("volume %s is published to %v", ids[i][0], got)
		}
	}
	// Both controllers unpublish both nodes of every volume at once.
	for i := range ids {
		for _, d := range ctrls {
			for _, node := range nodes {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := retryAborted(func() error {
						_, err := d.ctrl.ControllerUnpublishVolume(tctx(t), &csi.ControllerUnpublishVolumeRequest{VolumeId: ids[i][0], NodeId: node})
						return err
					}); err != nil {
						t.Errorf("unpublish %s from %s: %v", ids[i][0], node, err)
					}
				}()
			}
		}
	}
	wg.Wait()
	for _, node := range nodes {
		if atts, err := registry(t, a).NodeAttachments(tctx(t), node); err != nil || len(atts) > 0 {
			t.Fatalf("attachments of %s left: %v %v", node, atts, err)
		}
	}
	for i := range ids {
		for _, d := range ctrls {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// The other controller's delete may have the image open:
				// "in use" (FailedPrecondition) or Aborted, and the CO retries.
				if _, err := d.ctrl.DeleteVolume(tctx(t), &csi.DeleteVolumeRequest{VolumeId: ids[i][0]}); err != nil &&
					status.Code(err) != codes.Aborted && status.Code(err) != codes.FailedPrecondition {
					t.Errorf("delete %s: %v", ids[i][0], err)
				}
			}()
		}
	}
	wg.Wait()
	for i := range ids {
		del(t, a, ids[i][0]) // settles any delete that answered Aborted
	}
	left := append(c1.images(t, "volumes"), c1.images(t, "fast")...)
	if vols, _, _ := registry(t, a).Volumes(tctx(t), "", 100); len(vols) > 0 {
		left = append(left, fmt.Sprint(vols))
	}
	if p, _ := registry(t, a).Pending(tctx(t), records.KindVolume, 100); len(p) > 0 {
		left = append(left, fmt.Sprint(p))
	}
	if len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
}
