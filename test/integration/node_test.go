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
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/basalt-csi/basalt/pkg/node/mapper"
	"github.com/basalt-csi/basalt/pkg/provision"
	"github.com/basalt-csi/basalt/pkg/volumeid"
	"github.com/basalt-csi/basalt/test/testutil"
)

// nodePlugin is basalt-csi --mode=node with the fuse mapper, as a process.
type nodePlugin struct {
	t        *testing.T
	id       string
	stateDir string
	sock     string
	cmd      *exec.Cmd
	log      *bytes.Buffer
	node     csi.NodeClient
	env      []string // extra environment (failpoints)
	args     []string // extra flags
	cfg      string   // the configuration file, its controller's
}

func startNode(t *testing.T, d *testDriver, id string, env ...string) *nodePlugin {
	t.Helper()
	return startNodeArgs(t, d, id, nil, env...)
}

// startNodeArgs is startNode with extra flags.
func startNodeArgs(t *testing.T, d *testDriver, id string, args []string, env ...string) *nodePlugin {
	t.Helper()
	n := &nodePlugin{t: t, id: id, cfg: d.cfg, stateDir: t.TempDir(), sock: filepath.Join(t.TempDir(), "node.sock"), env: env, args: args}
	n.start()
	t.Cleanup(func() {
		n.kill()
		// Everything mounted under the test's temporary directories too
		// (staging and target paths a failed test left mounted).
		testutil.CleanNodeState(n.stateDir, filepath.Dir(n.stateDir))
		checkNoSecrets(t, "node plugin log", n.log.Bytes())
	})
	// Wait for registration so ControllerPublish finds the node.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := registry(t, d).Node(tctx(t), id); err == nil {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s did not register:\n%s", id, n.log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (n *nodePlugin) start() {
	n.t.Helper()
	n.log = &bytes.Buffer{}
	n.cmd = exec.Command(binary, append([]string{"--mode=node", "--node-id", n.id, "--zone", "zone-a", "--mapper", "fuse",
		"--state-dir", n.stateDir, "--config", n.cfg, "--endpoint", "unix://" + n.sock}, n.args...)...)
	n.cmd.Stdout, n.cmd.Stderr = n.log, n.log
	n.cmd.Env = append(os.Environ(), n.env...)
	if err := n.cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	conn, err := grpc.NewClient("unix://"+n.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() { conn.Close() })
	n.node = csi.NewNodeClient(conn)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := n.node.NodeGetInfo(context.Background(), &csi.NodeGetInfoRequest{}); err == nil {
			return
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("node plugin not serving:\n%s", n.log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (n *nodePlugin) kill() {
	if n.cmd != nil && n.cmd.Process != nil {
		_ = n.cmd.Process.Signal(syscall.SIGKILL)
		_ = n.cmd.Wait()
	}
}

// rbdFusePIDs finds the rbd-fuse daemons this node plugin started (their
// mount points are under its state directory).
func (n *nodePlugin) rbdFusePIDs() []int { return testutil.RBDFusePIDs(n.stateDir) }

// leftovers lists what a torn-down volume must not leave behind. NodeUnstage
// leaves the exit of an rbd-fuse daemon to the background (about 50 ms):
// daemons get 20 s to go.
func (n *nodePlugin) leftovers(t *testing.T, paths ...string) []string {
	for deadline := time.Now().Add(20 * time.Second); len(n.rbdFusePIDs()) > 0 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	var out []string
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(mounts), "\n") {
		for _, p := range append(paths, n.stateDir) {
			if strings.Contains(l, " "+p) {
				out = append(out, "mount: "+l)
			}
		}
	}
	loops, _ := exec.Command("losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE").Output()
	for _, l := range strings.Split(string(loops), "\n") {
		// A loop device left on a dead rbd-fuse's file shows "/basalt-<uuid> (deleted)".
		if strings.Contains(l, n.stateDir) || strings.Contains(l, "/basalt-") && strings.HasSuffix(l, "(deleted)") {
			out = append(out, "loop: "+l)
		}
	}
	if pids := n.rbdFusePIDs(); len(pids) > 0 {
		out = append(out, "rbd-fuse processes: "+strconv.Itoa(len(pids)))
	}
	entries, _ := os.ReadDir(filepath.Join(n.stateDir, "volumes"))
	for _, e := range entries {
		out = append(out, "staging record: "+e.Name())
	}
	return out
}

// device is the device of the one volume staged on n, from its record.
func (n *nodePlugin) device(t *testing.T) string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(n.stateDir, "volumes", "*.json"))
	if len(files) != 1 {
		t.Fatalf("%d staging records, want 1", len(files))
	}
	var rec struct {
		Mapping struct{ Device string } `json:"mapping"`
	}
	data, err := os.ReadFile(files[0])
	must(t, err)
	must(t, json.Unmarshal(data, &rec))
	if rec.Mapping.Device == "" {
		t.Fatalf("no device in %s", data)
	}
	return rec.Mapping.Device
}

func mountVC(fs string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

func stage(ctx context.Context, n *nodePlugin, vol, path string, vc *csi.VolumeCapability) error {
	_, err := n.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol, StagingTargetPath: path, VolumeCapability: vc})
	return err
}

func nodePublish(ctx context.Context, n *nodePlugin, vol, staging, target string, vc *csi.VolumeCapability, ro bool) error {
	_, err := n.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: vol, StagingTargetPath: staging, TargetPath: target, VolumeCapability: vc, Readonly: ro})
	return err
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func nodeUnpublish(t *testing.T, n *nodePlugin, vol, target string) {
	t.Helper()
	_, err := n.node.NodeUnpublishVolume(tctx(t), &csi.NodeUnpublishVolumeRequest{VolumeId: vol, TargetPath: target})
	must(t, err)
}

func unstage(t *testing.T, n *nodePlugin, vol, staging string) {
	t.Helper()
	_, err := n.node.NodeUnstageVolume(tctx(t), &csi.NodeUnstageVolumeRequest{VolumeId: vol, StagingTargetPath: staging})
	must(t, err)
}

func TestNodeMountVolumeLifecycle(t *testing.T) {
	d := startDriver(t, configYAML(), nil)
	n := startNode(t, d, "node-fuse")
	ctx := tctx(t)
	v := create(t, d, "pvc-node-mount", gib, map[string]string{"image": golden}, zoneReq("zone-a"))
	vol := v.GetVolumeId()
	vc := mountVC("ext4")
	root := t.TempDir()
	staging, target := filepath.Join(root, "staging"), filepath.Join(root, "target")
	must(t, os.MkdirAll(staging, 0o750))

	// Stage before ControllerPublish: refused.
	err := stage(ctx, n, vol, staging, vc)
	wantCode(t, err, codes.FailedPrecondition, "not published")
	// Publish without stage: refused, nothing bound.
	_, err = publish(ctx, d.ctrl, vol, "node-fuse", vc, false)
	must(t, err)
	err = nodePublish(ctx, n, vol, staging, target, vc, false)
	wantCode(t, err, codes.FailedPrecondition, "not staged")

	must(t, stage(ctx, n, vol, staging, vc))
	must(t, stage(ctx, n, vol, staging, vc)) // idempotent
	must(t, nodePublish(ctx, n, vol, staging, target, vc, false))
	must(t, nodePublish(ctx, n, vol, staging, target, vc, false)) // idempotent
	got, err := os.ReadFile(filepath.Join(target, "golden.txt"))
	if err != nil || strings.TrimSpace(string(got)) != goldenText {
		t.Fatalf("golden.txt through the target: %q %v", got, err)
	}
	must(t, os.WriteFile(filepath.Join(target, "mine.txt"), []byte("written by the pod\n"), 0o644))
	// The 64 MiB golden filesystem was grown to the 1 GiB volume.
	stats, err := n.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: vol, VolumePath: target})
	must(t, err)
	if total := stats.GetUsage()[0].GetTotal(); total < 900<<20 {
		t.Fatalf("filesystem is %d bytes, not grown to ~1 GiB", total)
	}
	if inodes := stats.GetUsage()[1]; inodes.GetUnit() != csi.VolumeUsage_INODES || inodes.GetTotal() == 0 {
		t.Fatalf("inode stats %v", inodes)
	}
	// Unstage while published: refused.
	_, err = n.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol, StagingTargetPath: staging})
	wantCode(t, err, codes.FailedPrecondition, "still published")

	nodeUnpublish(t, n, vol, target)
	nodeUnpublish(t, n, vol, target) // idempotent
	unstage(t, n, vol, staging)
	unstage(t, n, vol, staging) // idempotent
	if left := n.leftovers(t, staging, target); len(left) > 0 {
		t.Fatalf("left after unstage: %v", left)
	}

	// A second stage on fresh paths sees the data written before: it reached Ceph.
	staging2, target2 := filepath.Join(root, "staging2"), filepath.Join(root, "target2")
	must(t, os.MkdirAll(staging2, 0o750))
	must(t, stage(ctx, n, vol, staging2, vc))
	must(t, nodePublish(ctx, n, vol, staging2, target2, vc, false))
	if got, err := os.ReadFile(filepath.Join(target2, "mine.txt")); err != nil || string(got) != "written by the pod\n" {
		t.Fatalf("mine.txt after re-staging: %q %v", got, err)
	}

	// The node plugin dies with its rbd-fuse daemon (as in a container).
	pids := n.rbdFusePIDs()
	if len(pids) != 1 {
		t.Fatalf("%d rbd-fuse daemons for one staged volume", len(pids))
	}
	must(t, syscall.Kill(pids[0], syscall.SIGKILL))
	deadline := time.Now().Add(10 * time.Second)
	for {
		h, err := n.node.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: vol, VolumePublishPath: target2})
		must(t, err)
		st := h.GetVolumeHealth().GetHealthStatuses()
		if len(st) > 0 && st[0].GetStatus() == csi.VolumeHealthErrorType_INACCESSIBLE {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("volume with a dead rbd-fuse reported healthy: %v", h)
		}
		time.Sleep(100 * time.Millisecond)
	}
	n.kill()
	n.start()
	if !strings.Contains(n.log.String(), "staged volume healed") {
		t.Fatalf("the restarted plugin did not heal the volume:\n%s", n.log)
	}
	// Usable again at the same target, without re-staging.
	must(t, os.WriteFile(filepath.Join(target2, "after-restart.txt"), []byte("still here\n"), 0o644))
	if got, err := os.ReadFile(filepath.Join(target2, "mine.txt")); err != nil || string(got) != "written by the pod\n" {
		t.Fatalf("mine.txt after healing: %q %v", got, err)
	}
	h, err := n.node.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: vol, VolumePublishPath: target2})
	must(t, err)
	if len(h.GetVolumeHealth().GetHealthStatuses()) != 0 {
		t.Fatalf("healed volume reported unhealthy: %v", h)
	}

	nodeUnpublish(t, n, vol, target2)
	unstage(t, n, vol, staging2)
	unpublish(t, d.ctrl, vol, "node-fuse")
	if left := n.leftovers(t, staging, target, staging2, target2); len(left) > 0 {
		t.Fatalf("left after teardown: %v", left)
	}
	del(t, d, vol) // at once: the restart fenced the killed rbd-fuse's client
}

func TestNodeBlockVolume(t *testing.T) {
	d := startDriver(t, configYAML(), nil)
	n := startNode(t, d, "node-block")
	ctx := tctx(t)
	v := create(t, d, "pvc-node-block", 256<<20, nil, nil)
	vol := v.GetVolumeId()
	vc := capFor(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, true)
	root := t.TempDir()
	staging, target := filepath.Join(root, "staging"), filepath.Join(root, "dev")
	must(t, os.MkdirAll(staging, 0o750))
	_, err := publish(ctx, d.ctrl, vol, "node-block", vc, false)
	must(t, err)
	must(t, stage(ctx, n, vol, staging, vc))
	must(t, nodePublish(ctx, n, vol, staging, target, vc, false))
	payload := bytes.Repeat([]byte("basalt-block!"), 1000)
	f, err := os.OpenFile(target, os.O_WRONLY, 0)
	must(t, err)
	_, err = f.WriteAt(payload, 1<<20)
	must(t, err)
	must(t, f.Sync())
	f.Close()
	stats, err := n.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: vol, VolumePath: target})
	must(t, err)
	if stats.GetUsage()[0].GetTotal() != 256<<20 {
		t.Fatalf("block size %v", stats.GetUsage())
	}
	// A bind of the device that no publish recorded (made by hand or by
	// another tool) still uses it: unstage must refuse to unmap under it.
	// mountinfo shows such a bind with the source "udev", not the device.
	stray := filepath.Join(root, "stray")
	must(t, os.WriteFile(stray, nil, 0o600))
	dev := n.device(t)
	if out, err := exec.Command("mount", "--bind", dev, stray).CombinedOutput(); err != nil {
		t.Fatalf("binding %s: %v %s", dev, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", stray).Run() }) // if the test fails before
	nodeUnpublish(t, n, vol, target)
	_, err = n.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol, StagingTargetPath: staging})
	wantCode(t, err, codes.FailedPrecondition, "still mounted at "+stray)
	if out, err := exec.Command("umount", stray).CombinedOutput(); err != nil {
		t.Fatalf("unmounting %s: %v %s", stray, err, out)
	}
	unstage(t, n, vol, staging)
	if left := n.leftovers(t, staging, target); len(left) > 0 {
		t.Fatalf("left after unstage: %v", left)
	}
	// Re-stage and read the bytes back from Ceph.
	must(t, stage(ctx, n, vol, staging, vc))
	must(t, nodePublish(ctx, n, vol, staging, target, vc, false))
	got := make([]byte, len(payload))
	f, err = os.Open(target)
	must(t, err)
	_, err = f.ReadAt(got, 1<<20)
	f.Close()
	must(t, err)
	if !bytes.Equal(got, payload) {
		t.Fatal("bytes read back differ from those written")
	}
	// Healing a block volume: the daemon and the plugin die; the target path
	// is bound to the new device and the data is still there.
	pids := n.rbdFusePIDs()
	if len(pids) != 1 {
		t.Fatalf("%d rbd-fuse daemons", len(pids))
	}
	n.kill()
	must(t, syscall.Kill(pids[0], syscall.SIGKILL))
	n.start()
	if !strings.Contains(n.log.String(), "staged volume healed") {
		t.Fatalf("block volume not healed:\n%s", n.log)
	}
	f, err = os.Open(target)
	must(t, err)
	got = make([]byte, len(payload))
	_, err = f.ReadAt(got, 1<<20)
	f.Close()
	must(t, err)
	if !bytes.Equal(got, payload) {
		t.Fatal("bytes read after healing differ")
	}
	nodeUnpublish(t, n, vol, target)
	unstage(t, n, vol, staging)
	unpublish(t, d.ctrl, vol, "node-block")
	if left := n.leftovers(t, staging, target); len(left) > 0 {
		t.Fatalf("left after teardown: %v", left)
	}
	del(t, d, vol) // at once: the restart fenced the killed rbd-fuse's client
}

func TestNodeXFS(t *testing.T) {
	d := startDriver(t, configYAML(), nil)
	n := startNode(t, d, "node-xfs")
	ctx := tctx(t)
	v := create(t, d, "pvc-node-xfs", 512<<20, nil, nil)
	vol := v.GetVolumeId()
	vc := mountVC("xfs")
	root := t.TempDir()
	staging, target := filepath.Join(root, "staging"), filepath.Join(root, "target")
	_, err := publish(ctx, d.ctrl, vol, "node-xfs", vc, false)
	must(t, err)
	must(t, stage(ctx, n, vol, staging, vc))
	must(t, nodePublish(ctx, n, vol, staging, target, vc, false))
	must(t, os.WriteFile(filepath.Join(target, "x.txt"), []byte("xfs"), 0o644))
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	found := false
	for _, l := range strings.Split(string(mounts), "\n") {
		found = found || (strings.Contains(l, " "+staging+" ") && strings.Contains(l, " - xfs "))
	}
	if !found {
		t.Fatalf("%s is not an xfs mount", staging)
	}
	// Staging again as ext4 is a different volume capability: refused.
	err = stage(ctx, n, vol, staging, mountVC("ext4"))
	wantCode(t, err, codes.AlreadyExists)
	nodeUnpublish(t, n, vol, target)
	unstage(t, n, vol, staging)
	unpublish(t, d.ctrl, vol, "")
	del(t, d, vol)
}

func TestNodeReadOnlyAttachmentMapsReadOnly(t *testing.T) {
	d := startDriver(t, configYAML(), nil)
	n := startNode(t, d, "node-ro")
	ctx := tctx(t)
	v := create(t, d, "pvc-node-ro", gib, map[string]string{"image": golden}, nil)
	vol := v.GetVolumeId()
	vc := capFor(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY, false)
	root := t.TempDir()
	staging, target := filepath.Join(root, "staging"), filepath.Join(root, "target")
	must(t, os.MkdirAll(staging, 0o750))
	pc, err := publish(ctx, d.ctrl, vol, "node-ro", vc, true)
	must(t, err)
	if pc["mode"] != "ro" {
		t.Fatalf("publish context %v", pc)
	}
	must(t, stage(ctx, n, vol, staging, vc))
	must(t, nodePublish(ctx, n, vol, staging, target, vc, true))
	if got, err := os.ReadFile(filepath.Join(target, "golden.txt")); err != nil || strings.TrimSpace(string(got)) != goldenText {
		t.Fatalf("golden.txt: %q %v", got, err)
	}
	err = os.WriteFile(filepath.Join(target, "nope.txt"), []byte("x"), 0o644)
	if err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Fatalf("write to a read-only attachment: %v", err)
	}
	err = os.WriteFile(filepath.Join(staging, "nope.txt"), []byte("x"), 0o644)
	if err == nil {
		t.Fatal("the staging mount of a read-only attachment is writable")
	}
	nodeUnpublish(t, n, vol, target)
	unstage(t, n, vol, staging)
	unpublish(t, d.ctrl, vol, "")
	del(t, d, vol)
}

func TestNodeRefusesBadRequests(t *testing.T) {
	d := startDriver(t, configYAML(), nil)
	n := startNode(t, d, "node-bad")
	ctx := tctx(t)
	vc := mountVC("ext4")
	for _, tc := range []struct {
		err  error
		code codes.Code
	}{
		{stage(ctx, n, "", "/tmp/x", vc), codes.InvalidArgument},
		{stage(ctx, n, "vol", "relative/path", vc), codes.InvalidArgument},
		{stage(ctx, n, "vol", "/tmp/../etc", vc), codes.InvalidArgument},
		{stage(ctx, n, "vol", "/tmp/x", nil), codes.InvalidArgument},
		{stage(ctx, n, "not-a-basalt-id", "/tmp/x", vc), codes.NotFound},
		{stage(ctx, n, "bsl1.00000000000000000000000000000000.1."+strings.Repeat("c", 32), "/tmp/x", vc), codes.NotFound},
		{nodePublish(ctx, n, "not-a-basalt-id", "/tmp/s", "/tmp/t", vc, false), codes.NotFound},
		{nodePublish(ctx, n, "bsl1.00000000000000000000000000000000.1."+strings.Repeat("c", 32), "/tmp/s", "/tmp/t", vc, false), codes.FailedPrecondition},
	} {
		if c := codeOf(tc.err); c != tc.code {
			t.Errorf("got %v, want %v", tc.err, tc.code)
		}
	}
}

func codeOf(err error) codes.Code {
	st, _ := statusOf(err)
	return st
}

// The node's crash matrix: the plugin SIGKILLed at each of its failpoints
// (inside NodeStageVolume after the map, NodePublishVolume after the bind,
// NodeUnpublishVolume after the unmount, NodeUnstageVolume after the
// unmount and after the unmap), for filesystem and block volumes. The
// restarted plugin answers the CO's retry of the interrupted call, the
// rest of the lifecycle follows, and after it nothing is left on the node
// (mount, loop device, rbd-fuse, record) nor in Ceph.
func TestNodeCrashMatrix(t *testing.T) {
	d := startDriver(t, configYAML(), nil)
	ctx := tctx(t)
	type call struct {
		name  string
		point string // the failpoint inside this call
		do    func(n *nodePlugin, vol, staging, target string, vc *csi.VolumeCapability) error
	}
	calls := []call{
		{"stage", "node/after-map", func(n *nodePlugin, vol, staging, _ string, vc *csi.VolumeCapability) error {
			return stage(ctx, n, vol, staging, vc)
		}},
		{"publish", "node/after-bind", func(n *nodePlugin, vol, staging, target string, vc *csi.VolumeCapability) error {
			if err := nodePublish(ctx, n, vol, staging, target, vc, false); err != nil {
				return err
			}
			// The target is recorded (a retry that found it bound records
			// it too): unstage refuses for that reason, not another.
			_, err := n.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol, StagingTargetPath: staging})
			if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "still published") {
				return fmt.Errorf("unstage while published: %v", err)
			}
			return nil
		}},
		{"unpublish", "node/after-unbind", func(n *nodePlugin, vol, _, target string, _ *csi.VolumeCapability) error {
			_, err := n.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vol, TargetPath: target})
			return err
		}},
		{"unstage", "node/after-unmount", nil},
		{"unstage", "node/after-unmap", nil},
	}
	unstageCall := func(n *nodePlugin, vol, staging, _ string, _ *csi.VolumeCapability) error {
		_, err := n.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol, StagingTargetPath: staging})
		return err
	}
	lifecycle := []string{"stage", "publish", "unpublish", "unstage"}
	byName := map[string]call{}
	for _, c := range calls {
		if c.do == nil {
			c.do = unstageCall
		}
		if _, ok := byName[c.name]; !ok {
			byName[c.name] = c
		}
	}
	i := 0
	for _, armed := range calls {
		for _, block := range []bool{false, true} {
			i++
			id := fmt.Sprintf("node-crash-%d", i)
			n := startNode(t, d, id, "BASALT_FAILPOINTS="+armed.point+"=kill")
			v := create(t, d, "pvc-"+id, 256<<20, map[string]string{"image": golden}, zoneReq("zone-a"))
			vol := v.GetVolumeId()
			vc := mountVC("ext4")
			if block {
				vc = capFor(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, true)
			}
			root := t.TempDir()
			staging, target := filepath.Join(root, "staging"), filepath.Join(root, "target")
			must(t, os.MkdirAll(staging, 0o750))
			_, err := publish(ctx, d.ctrl, vol, id, vc, false)
			must(t, err)
			for _, name := range lifecycle {
				c := byName[name]
				err := c.do(n, vol, staging, target, vc)
				if name == armed.name && n.env != nil {
					if err == nil {
						t.Fatalf("%s: %s succeeded through a kill failpoint", armed.point, name)
					}
					_ = n.cmd.Wait()
					if !strings.Contains(n.log.String(), "failpoint "+armed.point+": SIGKILL") {
						t.Fatalf("the plugin did not die at %s (%v):\n%s", armed.point, err, n.log)
					}
					n.env = nil
					n.start()
					err = c.do(n, vol, staging, target, vc) // the CO's retry
				}
				if err != nil {
					t.Fatalf("%s (block %v): %s: %v\n%s", armed.point, block, name, err, n.log)
				}
			}
			if left := n.leftovers(t, staging, target); len(left) > 0 {
				t.Fatalf("%s (block %v): left on the node: %v\n%s", armed.point, block, left, n.log)
			}
			unpublish(t, d.ctrl, vol, id)
			del(t, d, vol)
			n.kill()
		}
	}
	if left := append(leftovers(t, d, c1, "volumes"), c1.images(t, "fast")...); len(left) > 0 {
		t.Fatalf("left in Ceph: %v", left)
	}
	t.Logf("%d node crash points survived", i)
}

// Healing asks whether the CO still wants a volume: one unpublished while
// the node plugin was down (its rbd-fuse died with it) is torn down at the
// restart, not re-mapped and re-mounted.
func TestNodeHealingDoesNotResurrectUnwantedVolumes(t *testing.T) {
	d := startDriver(t, configYAML(), nil)
	n := startNode(t, d, "node-heal")
	ctx := tctx(t)
	v := create(t, d, "pvc-node-heal", gib, map[string]string{"image": golden}, zoneReq("zone-a"))
	vol := v.GetVolumeId()
	vc := mountVC("ext4")
	staging := filepath.Join(t.TempDir(), "staging")
	must(t, os.MkdirAll(staging, 0o750))
	_, err := publish(ctx, d.ctrl, vol, "node-heal", vc, false)
	must(t, err)
	must(t, stage(ctx, n, vol, staging, vc))
	pids := n.rbdFusePIDs()
	if len(pids) != 1 {
		t.Fatalf("%d rbd-fuse daemons", len(pids))
	}
	n.kill()
	must(t, syscall.Kill(pids[0], syscall.SIGKILL))
	unpublish(t, d.ctrl, vol, "node-heal") // the CO moved on meanwhile
	n.start()
	if !strings.Contains(n.log.String(), "no longer wanted") || strings.Contains(n.log.String(), "staged volume healed") {
		t.Fatalf("the restarted plugin did not tear the unwanted volume down:\n%s", n.log)
	}
	if left := n.leftovers(t, staging); len(left) > 0 {
		t.Fatalf("left on the node: %v", left)
	}
	del(t, d, vol) // at once: the teardown fenced the dead rbd-fuse's client
}

// basalt-csi check --node: a mapping no staging record accounts for, a
// staged volume whose rbd-fuse died, and a key file a killed krbd command
// left are found; --repair unmaps the orphan and removes the key file but
// leaves the dead mapping to healing (and so still exits non-zero); after
// the plugin's restart heals it, the node is clean.
func TestNodeCheckFindsAndRepairs(t *testing.T) {
	d := startDriver(t, configYAML(), nil)
	n := startNode(t, d, "node-check")
	ctx := tctx(t)
	vc := mountVC("ext4")
	root := t.TempDir()
	var vols, stagings []string
	for _, name := range []string{"orphan", "dead"} {
		v := create(t, d, "pvc-node-check-"+name, 256<<20, map[string]string{"image": golden, "backend": "a-std"}, nil)
		staging := filepath.Join(root, name)
		must(t, os.MkdirAll(staging, 0o750))
		_, err := publish(ctx, d.ctrl, v.GetVolumeId(), n.id, vc, false)
		must(t, err)
		must(t, stage(ctx, n, v.GetVolumeId(), staging, vc))
		vols, stagings = append(vols, v.GetVolumeId()), append(stagings, staging)
	}
	check := func(args ...string) (map[string]string, error) {
		t.Helper()
		out, err := exec.Command(binary, append([]string{"check", "--node", "--state-dir", n.stateDir, "--mapper", "fuse", "-o", "json"}, args...)...).Output()
		var found []provision.Finding
		if jerr := json.Unmarshal(out, &found); jerr != nil {
			t.Fatalf("check --node %v: %v, output %q: %v", args, err, out, jerr)
		}
		got := map[string]string{}
		for _, f := range found {
			got[f.Object] = f.Kind
			if f.Repaired {
				got[f.Object] += " repaired"
			}
		}
		return got, err
	}
	if got, err := check(); err != nil || len(got) != 0 {
		t.Fatalf("check of a clean node: %v %v", got, err)
	}

	// The plugin is down; someone unmounted the first volume and removed its
	// record by hand; the second's rbd-fuse died; a key file is an hour old.
	n.kill()
	orphanImage := "volumes/" + imageOf(t, &csi.Volume{VolumeId: vols[0]})
	if out, err := exec.Command("umount", stagings[0]).CombinedOutput(); err != nil {
		t.Fatalf("umount: %v %s", err, out)
	}
	uuid0, _ := volumeid.Parse(vols[0])
	must(t, os.Remove(filepath.Join(n.stateDir, "volumes", uuid0.UUID+".json")))
	deadDir := filepath.Join(n.stateDir, "fuse", "volumes", imageOf(t, &csi.Volume{VolumeId: vols[1]}))
	dead := mapper.RBDFusePIDs(func(mp string) bool { return mp == deadDir })
	if len(dead) != 1 {
		t.Fatalf("%d rbd-fuse daemons for the second volume", len(dead))
	}
	must(t, syscall.Kill(dead[0], syscall.SIGKILL))
	key := filepath.Join(n.stateDir, "keys", "client.basalt-node.key")
	must(t, os.MkdirAll(filepath.Dir(key), 0o700))
	must(t, os.WriteFile(key, []byte("x"), 0o600))
	old := time.Now().Add(-time.Hour)
	must(t, os.Chtimes(key, old, old))
	time.Sleep(time.Second) // the daemon's death reaches its mount

	want := map[string]string{orphanImage: "orphan-mapping", vols[1]: "dead-mapping", key: "orphan-key-file"}
	if got, err := check(); err == nil || !maps.Equal(got, want) {
		t.Fatalf("check found %v (%v), want %v", got, err, want)
	}
	want = map[string]string{orphanImage: "orphan-mapping repaired", vols[1]: "dead-mapping", key: "orphan-key-file repaired"}
	if got, err := check("--repair"); err == nil || !maps.Equal(got, want) {
		t.Fatalf("check --repair: %v (%v), want %v", got, err, want)
	}
	n.start() // heals the second volume
	if got, err := check(); err != nil || len(got) != 0 {
		t.Fatalf("check after the repair and the restart: %v %v\n%s", got, err, n.log)
	}
	unstage(t, n, vols[1], stagings[1])
	if left := n.leftovers(t, stagings...); len(left) > 0 {
		t.Fatalf("left on the node: %v", left)
	}
	for _, v := range vols {
		unpublish(t, d.ctrl, v, n.id)
		del(t, d, v)
	}
}
