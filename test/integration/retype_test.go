package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/basalt-csi/basalt/pkg/records"
)

// retypeYAML adds a zone-a backend in the second cluster (tier remote), so
// that a retype within zone-a can cross clusters.
func retypeYAML() string {
	return configYAML(fmt.Sprintf(`  - name: a-remote
    cephConf: %s
    user: admin
    keyring: %s
    pool: remote
    zone: zone-a
    capabilities: {tier: remote}
    nodeUser: basalt-node
    nodeKeyring: %s
`, c2.Conf, c2.Keyring, c2.NodeKeyring))
}

// where tells which of the test pools hold the image (c1/volumes, ...).
func where(t *testing.T, image string) []string {
	t.Helper()
	var out []string
	for _, p := range []struct {
		c    *cluster
		pool string
	}{{c1, "volumes"}, {c1, "fast"}, {c2, "volumes"}, {c2, "remote"}} {
		if slices.Contains(p.c.images(t, p.pool), image) {
			out = append(out, p.c.Name+"/"+p.pool)
		}
	}
	return out
}

// writeThrough stages and publishes vol on n, writes text into a file on it
// (or, with check, reads it back and compares), and tears everything down.
func writeThrough(t *testing.T, d *testDriver, n *nodePlugin, vol, text string, check bool) {
	t.Helper()
	s := stageAndPublish(t, d, n, vol, mountVC("ext4"))
	f := filepath.Join(s.target, "retype.txt")
	if check {
		got, err := os.ReadFile(f)
		if err != nil || string(got) != text {
			t.Fatalf("after the move, %s holds %q (%v), want %q", f, got, err, text)
		}
		if golden, err := os.ReadFile(filepath.Join(s.target, "golden.txt")); err != nil || !strings.Contains(string(golden), goldenText) {
			t.Fatalf("the golden image's file after the move: %q %v", golden, err)
		}
	} else {
		must(t, os.WriteFile(f, []byte(text), 0o644))
	}
	s.teardown(t, d, n)
}

// Retype: a VolumeAttributesClass asking for another tier moves the volume
// (a clone of the golden image, holding data) by RBD live migration within
// the cluster and by a copy to the other cluster; the volume ID keeps
// working for staging, snapshots, restores, expansion and deletion.
// Published volumes, volumes with snapshots and other zones are refused.
func TestRetype(t *testing.T) {
	d := startDriver(t, retypeYAML(), nil)
	n := startNode(t, d, "node-retype")
	ctx := tctx(t)
	v := create(t, d, "pvc-retype", 128*mib, map[string]string{"image": golden, "backend": "a-std"}, nil)
	vol, image := v.GetVolumeId(), imageOf(t, v)
	writeThrough(t, d, n, vol, "written before the moves\n", false)
	modify := func(params map[string]string) error {
		_, err := d.ctrl.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{VolumeId: vol, MutableParameters: params})
		return err
	}
	expectAt := func(want string) {
		t.Helper()
		if got := where(t, image); len(got) != 1 || got[0] != want {
			t.Fatalf("image %s is in %v, want only %s", image, got, want)
		}
	}

	// Live migration to the fast pool of the same cluster; a retry is a no-op.
	must(t, modify(map[string]string{"capability.tier": "fast", "qosIopsLimit": "300"}))
	expectAt("it1/fast")
	must(t, modify(map[string]string{"capability.tier": "fast", "qosIopsLimit": "300"}))
	info := c1.rbd(t, "info", "fast/"+image)
	if !strings.Contains(info, "parent: images/golden@v1") {
		t.Fatalf("the migrated volume lost its golden parent:\n%s", info)
	}
	if m := c1.rbd(t, "image-meta", "list", "fast/"+image); !strings.Contains(m, "conf_rbd_qos_iops_limit") {
		t.Fatalf("QoS of the same modify not applied after the move:\n%s", m)
	}
	writeThrough(t, d, n, vol, "written before the moves\n", true)
	e, err := registry(t, d).Volume(ctx, vol)
	if err != nil || e.Backend != "a-fast" {
		t.Fatalf("index entry after the move: %+v %v", e, err)
	}

	// Refusals: published, another zone, snapshots.
	s := stageAndPublish(t, d, n, vol, mountVC("ext4"))
	wantCode(t, modify(map[string]string{"capability.tier": "remote"}), codes.FailedPrecondition, "unpublished")
	s.teardown(t, d, n)
	wantCode(t, modify(map[string]string{"backend": "b-std"}), codes.InvalidArgument, "zone")
	snap := snapshot(t, d, "snap-retype", vol)
	wantCode(t, modify(map[string]string{"capability.tier": "remote"}), codes.FailedPrecondition, "snapshot")
	// A snapshot of a moved volume restores, and the volume grows.
	rr, err := d.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-retype-restored", VolumeCapabilities: mountCap(), VolumeContentSource: fromSnapshot(snap.GetSnapshotId())})
	must(t, err)
	writeThrough(t, d, n, rr.GetVolume().GetVolumeId(), "written before the moves\n", true)
	del(t, d, rr.GetVolume().GetVolumeId())
	delSnap(t, d, snap.GetSnapshotId())
	if _, err := expand(ctx, d, vol, 192*mib, 0, mountVC("ext4")); err != nil {
		t.Fatalf("expanding the moved volume: %v", err)
	}

	// A copy to the other cluster, and another one back home.
	must(t, modify(map[string]string{"capability.tier": "remote"}))
	expectAt("it2/remote")
	// basalt-csi check knows the moved image for what it is.
	findings, err := d.prov.Check(ctx, false, time.Hour)
	must(t, err)
	for _, f := range findings {
		if strings.Contains(f.Object, image) || strings.Contains(f.Object, vol) {
			t.Fatalf("check reports the moved volume: %+v", f)
		}
	}
	writeThrough(t, d, n, vol, "written before the moves\n", true)
	must(t, modify(map[string]string{"backend": "a-std"}))
	expectAt("it1/volumes")
	writeThrough(t, d, n, vol, "written before the moves\n", true)
	if got := c1.rbd(t, "info", "volumes/"+image); !strings.Contains(got, "size 192 MiB") {
		t.Fatalf("size after the moves:\n%s", got)
	}

	del(t, d, vol)
	gone(t, d, image)
}

// gone checks that nothing of a deleted volume whose image was image is
// left: the image in any pool, RBD trash, a move record.
func gone(t *testing.T, d *testDriver, image string) {
	t.Helper()
	if got := where(t, image); len(got) > 0 {
		t.Fatalf("image left after the delete in %v", got)
	}
	if moves, _, err := registry(t, d).Moves(tctx(t), "", 10); err != nil || len(moves) > 0 {
		t.Fatalf("move records left after the delete: %+v %v", moves, err)
	}
	for _, p := range []struct {
		c    *cluster
		pool string
	}{{c1, "volumes"}, {c1, "fast"}, {c2, "remote"}} {
		if out := trashLeft(t, d, p.c, p.pool); out != "" {
			t.Fatalf("trash left in %s/%s: %s", p.c.Name, p.pool, out)
		}
	}
}

// A retype killed before and after each of its steps, then retried by the
// restarted controller as the resizer would: the retry succeeds, the image
// is in exactly one place with its data, and no record of the move is left
// unfinished.
func TestRetypeCrashMatrix(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	must(t, os.WriteFile(cfg, []byte(retypeYAML()), 0o600))
	setup := startBinary(t, cfg, filepath.Join(t.TempDir(), "csi.sock"))
	ctx := opCtx(t)
	resp, err := setup.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "crash-retype", VolumeCapabilities: mountCap(), Parameters: map[string]string{"image": golden, "backend": "a-std"}})
	must(t, err)
	_ = setup.cmd.Process.Kill()
	_ = setup.cmd.Wait()
	vol, image := resp.GetVolume().GetVolumeId(), imageOf(t, resp.GetVolume())
	want := digest(t, c1, "volumes/"+image) // the golden image's data

	common := []string{"record the move", "switch to the new place", "index the new place", "mark the move done"}
	plans := []struct {
		to, at string // the tier asked for, where the image then is
		steps  []string
	}{
		{"fast", "it1/fast", append([]string{"prepare the migration", "execute the migration", "commit the migration"}, common...)},
		{"remote", "it2/remote", append([]string{"snapshot for the copy", "copy the image", "remove the source"}, common...)},
	}
	retype := func(p *proc, tier string) error {
		_, err := p.ctrl.ControllerModifyVolume(opCtx(t), &csi.ControllerModifyVolumeRequest{VolumeId: vol, MutableParameters: map[string]string{"capability.tier": tier}})
		return err
	}
	n := 0
	for _, plan := range plans {
		for _, step := range plan.steps {
			for _, when := range []string{"before", "after"} {
				n++
				last := crashWith(t, cfg, when+" "+step, func(ctx context.Context, p *proc) error { return retype(p, plan.to) })
				if got := where(t, image); len(got) != 1 || got[0] != plan.at {
					t.Fatalf("%s %s: image in %v, want %s", when, step, got, plan.at)
				}
				// Home again, unarmed, for the next point.
				if err := retype(last, "standard"); err != nil {
					t.Fatalf("%s %s: moving back: %v", when, step, err)
				}
				_ = last.cmd.Process.Kill()
				_ = last.cmd.Wait()
			}
		}
	}
	t.Logf("%d retype crash points survived", n)

	// No retry at all: the restarted controller's recovery finishes its
	// own interrupted move by itself.
	d := startDriver(t, retypeYAML(), nil)
	p := startBinary(t, cfg, filepath.Join(t.TempDir(), "csi.sock"), "BASALT_FAILPOINTS=after switch to the new place=kill")
	_ = retype(p, "fast")
	_ = p.cmd.Wait()
	p = startBinary(t, cfg, filepath.Join(t.TempDir(), "csi.sock"))
	deadline := time.Now().Add(time.Minute)
	for {
		m, err := registry(t, d).Move(tctx(t), vol)
		if err == nil && m.State == records.MoveDone {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the restarted controller did not finish the move: %+v %v\n%s", m, err, p.log)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got := where(t, image); len(got) != 1 || got[0] != "it1/fast" {
		t.Fatalf("after recovery the image is in %v", got)
	}
	must(t, retype(p, "standard"))
	if got := where(t, image); len(got) != 1 || got[0] != "it1/volumes" {
		t.Fatalf("image in %v at the end", got)
	}
	if got := digest(t, c1, "volumes/"+image); got != want {
		t.Fatal("the volume's data changed across the moves")
	}
	moves, _, err := registry(t, d).Moves(tctx(t), "", 10)
	if err != nil || len(moves) != 1 || moves[0].State != records.MoveDone {
		t.Fatalf("move records: %+v %v", moves, err)
	}
	del(t, d, vol)
	gone(t, d, image)
}

// digest is the SHA-256 of an image's contents (rbd export to a file).
func digest(t *testing.T, c *cluster, image string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "export")
	c.rbd(t, "export", "--no-progress", image, f)
	data, err := os.ReadFile(f)
	must(t, err)
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}
