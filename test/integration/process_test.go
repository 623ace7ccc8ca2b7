package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/basalt-csi/basalt/pkg/provision"
	"github.com/basalt-csi/basalt/pkg/records"
	"github.com/basalt-csi/basalt/pkg/volumeid"
)

var binary = filepath.Join(repoRoot, "bin", "basalt-csi")

func TestBinaryRejectsBadConfig(t *testing.T) {
	dir := t.TempDir()
	for name, tc := range map[string]struct {
		yaml     string
		mentions []string
	}{
		"unknown key": {strings.Replace(configYAML(), "pool: fast", "pool: fast\n    poolz: x", 1), []string{`backend "a-fast"`, `"poolz"`}},
		"missing key": {strings.Replace(configYAML(), "    zone: zone-b\n", "", 1), []string{`backend "b-std"`, `"zone"`}},
		"duplicate":   {strings.Replace(configYAML(), "name: b-std", "name: a-std", 1), []string{`"a-std"`, "duplicate"}},
		"malformed":   {"backends: [", []string{"malformed"}},
		"no backends": {"cephTimeoutSeconds: 3\n", []string{"backends"}},
	} {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".yaml")
		if err := os.WriteFile(path, []byte(tc.yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, binary, "--mode=controller", "--config", path, "--endpoint", "unix://"+filepath.Join(dir, "s.sock")).CombinedOutput()
		cancel()
		if err == nil {
			t.Errorf("%s: the driver started", name)
			continue
		}
		for _, m := range append(tc.mentions, path) {
			if !bytes.Contains(out, []byte(m)) {
				t.Errorf("%s: output %q does not mention %s", name, out, m)
			}
		}
	}
}

// proc is basalt-csi run as a real process.
type proc struct {
	cmd  *exec.Cmd
	conn *grpc.ClientConn
	ctrl csi.ControllerClient
	ids  csi.IdentityClient
	log  *bytes.Buffer
}

func startBinary(t *testing.T, cfg, sock string, env ...string) *proc {
	t.Helper()
	return startBinaryArgs(t, cfg, sock, nil, env...)
}

// startBinaryArgs is startBinary with more flags.
func startBinaryArgs(t *testing.T, cfg, sock string, args []string, env ...string) *proc {
	t.Helper()
	p := &proc{log: &bytes.Buffer{}}
	p.cmd = exec.Command(binary, append([]string{"--mode=controller", "--config", cfg, "--endpoint", "unix://" + sock}, args...)...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
		checkNoSecrets(t, "basalt-csi log", p.log.Bytes())
	})
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	p.conn, p.ctrl, p.ids = conn, csi.NewControllerClient(conn), csi.NewIdentityClient(conn)
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := p.ids.Probe(context.Background(), &csi.ProbeRequest{})
		if err == nil && resp.GetReady().GetValue() {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("driver not ready: %v\n%s", err, p.log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestReservationSurvivesSIGKILL(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "csi.sock")
	p := startBinary(t, cfgPath, sock)
	req := &csi.CreateVolumeRequest{
		Name: "pvc-restart", CapacityRange: &csi.CapacityRange{RequiredBytes: gib},
		VolumeCapabilities: mountCap(), Parameters: map[string]string{"image": golden},
	}
	first, err := p.ctrl.CreateVolume(tctx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = p.cmd.Wait()

	p2 := startBinary(t, cfgPath, sock)
	again, err := p2.ctrl.CreateVolume(tctx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	if again.GetVolume().GetVolumeId() != first.GetVolume().GetVolumeId() {
		t.Fatalf("after restart: %s, before: %s", again.GetVolume().GetVolumeId(), first.GetVolume().GetVolumeId())
	}
	list, err := p2.ctrl.ListVolumes(tctx(t), &csi.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range list.GetEntries() {
		found = found || e.GetVolume().GetVolumeId() == first.GetVolume().GetVolumeId()
	}
	if !found {
		t.Fatal("volume not listed after restart")
	}
	if _, err := p2.ctrl.DeleteVolume(tctx(t), &csi.DeleteVolumeRequest{VolumeId: first.GetVolume().GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(p.log.String(), "volume created") || !strings.Contains(p2.log.String(), "volume already exists for this name") {
		t.Errorf("logs do not explain what happened:\n%s\n---\n%s", p.log, p2.log)
	}
}

// A backend whose cluster is not running at start is marked down, skipped
// by the scheduler, and joins once its cluster comes up.
func TestBackendDownAtStartRejoins(t *testing.T) {
	late := filepath.Join(repoRoot, "_output", "ceph", "it3")
	extra := `  - name: c-late
    cephConf: ` + filepath.Join(late, "ceph.conf") + `
    user: admin
    keyring: ` + filepath.Join(late, "ceph.client.admin.keyring") + `
    pool: volumes
    zone: zone-c
`
	yaml := strings.Replace(configYAML(), "  - name: b-std", extra+"  - name: b-std", 1)
	d := startDriver(t, yaml, nil)
	probe, err := d.ids.Probe(tctx(t), &csi.ProbeRequest{})
	if err != nil || !probe.GetReady().GetValue() {
		t.Fatalf("probe with one backend down: %v %v", probe, err)
	}
	_, err = d.ctrl.CreateVolume(tctx(t), &csi.CreateVolumeRequest{
		Name: "pvc-late", VolumeCapabilities: mountCap(), Parameters: map[string]string{"backend": "c-late"},
	})
	wantCode(t, err, codes.Unavailable, "c-late", "down")

	if _, err := startCluster("it3", "volumes"); err != nil {
		t.Fatal(err)
	}
	defer stopCluster("it3")
	deadline := time.Now().Add(60 * time.Second)
	for !contains(d.mgr.Up(), "c-late") {
		if time.Now().After(deadline) {
			t.Fatalf("c-late did not rejoin; up: %v", d.mgr.Up())
		}
		time.Sleep(500 * time.Millisecond)
	}
	v := create(t, d, "pvc-late", 64<<20, map[string]string{"backend": "c-late"}, nil)
	if zoneOf(v) != "zone-c" {
		t.Fatalf("zone %s", zoneOf(v))
	}
	del(t, d, v.GetVolumeId())
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// A controller SIGKILLed during a burst of creates leaves images open (its
// watches outlive it by ~30 s). Restarted, it blocklists its previous
// incarnation, so the CO's retries right after the restart succeed, never
// "image is in use", and every name ends with exactly one image.
func TestRetryAfterSIGKILLMidBurstSucceeds(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "csi.sock")
	cfg := cfgPath
	// Killed while a create has its new image open (a watch on it).
	p := startBinary(t, cfg, sock, "BASALT_FAILPOINTS=ceph/finish-open=kill")
	const n = 8
	reqs := make([]*csi.CreateVolumeRequest, n)
	for i := range reqs {
		reqs[i] = &csi.CreateVolumeRequest{
			Name: fmt.Sprintf("pvc-burst-%d", i), CapacityRange: &csi.CapacityRange{RequiredBytes: gib},
			VolumeCapabilities: mountCap(), Parameters: map[string]string{"image": golden, "backend": "a-std"},
		}
	}
	before := len(c1.images(t, "volumes"))
	var wg sync.WaitGroup
	for _, r := range reqs {
		wg.Add(1)
		go func() { defer wg.Done(); _, _ = p.ctrl.CreateVolume(tctx(t), r) }()
	}
	_ = p.cmd.Wait()
	wg.Wait()
	if !strings.Contains(p.log.String(), "failpoint ceph/finish-open: SIGKILL") {
		t.Fatalf("the failpoint did not fire:\n%s", p.log)
	}

	p2 := startBinary(t, cfg, sock)
	ids := map[string]bool{}
	for _, r := range reqs {
		resp, err := p2.ctrl.CreateVolume(tctx(t), r)
		if err != nil {
			t.Fatalf("retry of %s right after the restart: %v\n%s", r.Name, err, p2.log)
		}
		ids[imageOf(t, resp.GetVolume())] = true
	}
	imgs := c1.images(t, "volumes")
	if len(imgs)-before != n || len(ids) != n {
		t.Errorf("%d new images for %d names (%d distinct volumes): %v", len(imgs)-before, n, len(ids), imgs)
	}
	if !strings.Contains(p2.log.String(), "blocklisted the previous incarnation") {
		t.Errorf("the restart did not fence its previous incarnation:\n%s", p2.log)
	}
	for _, r := range reqs {
		resp, _ := p2.ctrl.CreateVolume(tctx(t), r)
		if _, err := p2.ctrl.DeleteVolume(tctx(t), &csi.DeleteVolumeRequest{VolumeId: resp.GetVolume().GetVolumeId()}); err != nil {
			t.Errorf("delete %s: %v", r.Name, err)
		}
	}
}

// basalt-csi check finds an image no record accounts for, an index entry
// whose image is gone, an RBD snapshot no snapshot record accounts for and
// a snapshot entry whose RBD snapshot is gone; --repair removes them all; a
// live volume and its snapshot are untouched.
func TestCheckFindsAndRepairsLeftovers(t *testing.T) {
	d := startDriver(t, configYAML(), nil)
	ctx := tctx(t)
	live := create(t, d, "pvc-check-live", 0, map[string]string{"image": golden, "backend": "a-std"}, nil)
	defer del(t, d, live.GetVolumeId())
	liveSnap := snapshot(t, d, "snap-check-live", live.GetVolumeId())
	defer delSnap(t, d, liveSnap.GetSnapshotId())
	orphan := "basalt-" + volumeid.NewUUID()
	c1.rbd(t, "clone", golden, "volumes/"+orphan)
	cl, _, _ := d.mgr.Get("a-std")
	ghost, _ := volumeid.New(cl.ClusterID(), cl.PoolID())
	must(t, registry(t, d).IndexVolume(ctx, records.VolumeEntry{VolumeID: ghost.String(), Name: "ghost", Backend: "a-std", SizeBytes: 1}))
	orphanSnap := imageOf(t, live) + "@" + volumeid.SnapPrefix + volumeid.NewUUID()
	c1.rbd(t, "snap", "create", "volumes/"+orphanSnap)
	ghostSnap := snapshot(t, d, "snap-check-ghost", live.GetVolumeId())
	sid, _ := volumeid.ParseSnapshot(ghostSnap.GetSnapshotId())
	c1.rbd(t, "snap", "rm", "volumes/"+imageOf(t, live)+"@"+sid.SnapName())

	run := func(args ...string) (string, error) {
		out, err := exec.Command(binary, append([]string{"check", "--config", cfgPath, "-o", "json"}, args...)...).Output()
		return string(out), err
	}
	out, err := run()
	if err == nil {
		t.Fatalf("check found nothing:\n%s", out)
	}
	var found []provision.Finding
	must(t, json.Unmarshal([]byte(out), &found))
	got := map[string]string{}
	for _, f := range found {
		got[f.Object] = f.Kind
	}
	want := map[string]string{orphan: "orphan-image", ghost.String(): "ghost-volume", orphanSnap: "orphan-snapshot", ghostSnap.GetSnapshotId(): "ghost-snapshot"}
	if !maps.Equal(got, want) {
		t.Fatalf("check found %v, want %v", got, want)
	}
	if out, err := run("--repair"); err != nil {
		t.Fatalf("check --repair: %v\n%s", err, out)
	}
	if out, err := run(); err != nil || strings.TrimSpace(out) != "[]" {
		t.Fatalf("check after the repair: %v\n%s", err, out)
	}
	if imgs := c1.images(t, "volumes"); len(imgs) != 1 || imgs[0] != imageOf(t, live) {
		t.Fatalf("images after the repair: %v", imgs)
	}
	snaps, err := d.ctrl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SourceVolumeId: live.GetVolumeId()})
	must(t, err)
	if e := snaps.GetEntries(); len(e) != 1 || e[0].GetSnapshot().GetSnapshotId() != liveSnap.GetSnapshotId() {
		t.Fatalf("snapshots after the repair: %v", e)
	}
	// The ghost's name was released with its entry: the name is free again.
	again := snapshot(t, d, "snap-check-ghost", live.GetVolumeId())
	if again.GetSnapshotId() == ghostSnap.GetSnapshotId() {
		t.Fatal("the repaired ghost snapshot's name still reserved its old ID")
	}
	delSnap(t, d, again.GetSnapshotId())
}
