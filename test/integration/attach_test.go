package integration

import (
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/basalt-csi/basalt/pkg/access"
	"github.com/basalt-csi/basalt/pkg/records"
	"github.com/basalt-csi/basalt/pkg/volumeid"
)

// startNodePlugin runs basalt-csi --mode=node, which registers itself in Ceph.
func startNodePlugin(t *testing.T, d *testDriver, id, zone string, maxVolumes int) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "node.sock")
	cmd := exec.Command(binary, "--mode=node", "--node-id", id, "--zone", zone, "--config", cfgPath,
		"--endpoint", "unix://"+sock, "--max-volumes-per-node", strconv.Itoa(maxVolumes))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	reg := registry(t, d)
	deadline := time.Now().Add(30 * time.Second)
	for {
		n, err := reg.Node(tctx(t), id)
		if err == nil && n.MaxVolumes == int64(maxVolumes) && n.Zone == zone && time.Since(n.LastSeen) < 20*time.Second {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s did not register: %v %+v", id, err, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func registry(t *testing.T, d *testDriver) *records.Registry {
	cl, err := d.mgr.Registry()
	if err != nil {
		t.Fatal(err)
	}
	return records.NewRegistry(cl)
}

func capFor(mode csi.VolumeCapability_AccessMode_Mode, block bool) *csi.VolumeCapability {
	c := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode}}
	if block {
		c.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
	} else {
		c.AccessType = &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}}
	}
	return c
}

func publish(ctx context.Context, c csi.ControllerClient, vol, node string, vc *csi.VolumeCapability, ro bool) (map[string]string, error) {
	resp, err := c.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: vol, NodeId: node, VolumeCapability: vc, Readonly: ro})
	return resp.GetPublishContext(), err
}

func unpublish(t *testing.T, c csi.ControllerClient, vol, node string) {
	t.Helper()
	if _, err := c.ControllerUnpublishVolume(tctx(t), &csi.ControllerUnpublishVolumeRequest{VolumeId: vol, NodeId: node}); err != nil {
		t.Fatalf("unpublish %s from %q: %v", vol, node, err)
	}
}

func publishedNodes(t *testing.T, c csi.ControllerClient, vol string) []string {
	t.Helper()
	token := ""
	for {
		resp, err := c.ListVolumes(tctx(t), &csi.ListVolumesRequest{StartingToken: token, MaxEntries: 50})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range resp.GetEntries() {
			if e.GetVolume().GetVolumeId() == vol {
				nodes := e.GetStatus().GetPublishedNodeIds()
				sort.Strings(nodes)
				return nodes
			}
		}
		if token = resp.GetNextToken(); token == "" {
			t.Fatalf("volume %s not listed", vol)
		}
	}
}

func TestPublishSingleWriter(t *testing.T) {
	d := startDriver(t, configYAML(), nil)
	startNodePlugin(t, d, "node-a", "zone-a", 16)
	startNodePlugin(t, d, "node-b", "zone-a", 16)
	v := create(t, d, "pvc-attach-snw", gib, map[string]string{"image": golden}, nil)
	vol := v.GetVolumeId()
	snw := capFor(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, false)

	pc, err := publish(tctx(t), d.ctrl, vol, "node-a", snw, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"attachmentID", "mode", "pool", "image", "clusterID", "monitors", "backend"} {
		if pc[k] == "" {
			t.Errorf("publish_context lacks %s: %v", k, pc)
		}
	}
	if pc["mode"] != "rw" || pc["image"] != imageOf(t, v) || !strings.Contains(pc["monitors"], "127.0.0.1") {
		t.Errorf("publish_context %v", pc)
	}
	for k, val := range pc {
		if strings.Contains(strings.ToLower(k), "key") || strings.Contains(val, "AQ") {
			t.Errorf("publish_context carries a secret-looking entry %s=%s", k, val)
		}
	}
	again, err := publish(tctx(t), d.ctrl, vol, "node-a", snw, false)
	if err != nil || again["attachmentID"] != pc["attachmentID"] {
		t.Fatalf("idempotent publish: %v %v (first %v)", again, err, pc)
	}
	_, err = publish(tctx(t), d.ctrl, vol, "node-b", snw, false)
	wantCode(t, err, codes.FailedPrecondition, "node-a")
	_, err = publish(tctx(t), d.ctrl, vol, "node-a", snw, true)
	wantCode(t, err, codes.AlreadyExists, "readonly")
	_, err = publish(tctx(t), d.ctrl, vol, "ghost", snw, false)
	wantCode(t, err, codes.NotFound, "ghost")
	_, err = publish(tctx(t), d.ctrl, "bsl1.00000000000000000000000000000000.1."+strings.Repeat("b", 32), "node-a", snw, false)
	wantCode(t, err, codes.NotFound)
	_, err = publish(tctx(t), d.ctrl, vol, "", snw, false)
	wantCode(t, err, codes.InvalidArgument, "node_id")
	_, err = publish(tctx(t), d.ctrl, vol, "node-a", nil, false)
	wantCode(t, err, codes.InvalidArgument, "volume_capability")

	if got := publishedNodes(t, d.ctrl, vol); len(got) != 1 || got[0] != "node-a" {
		t.Fatalf("published nodes %v", got)
	}
	gv, err := d.ctrl.ControllerGetVolume(tctx(t), &csi.ControllerGetVolumeRequest{VolumeId: vol})
	if err != nil || len(gv.GetStatus().GetPublishedNodeIds()) != 1 {
		t.Fatalf("ControllerGetVolume: %v %v", gv, err)
	}
	_, err = d.ctrl.DeleteVolume(tctx(t), &csi.DeleteVolumeRequest{VolumeId: vol})
	wantCode(t, err, codes.FailedPrecondition, "node-a")

	// The operator view reads the same records.
	out, err := exec.Command(binary, "attachments", "--config", cfgPath, "--volume", vol, "-o", "json").Output()
	if err != nil {
		t.Fatal(err)
	}
	var atts []records.AttachmentRecord
	if err := json.Unmarshal(out, &atts); err != nil || len(atts) != 1 || atts[0].Node != "node-a" || atts[0].ID != pc["attachmentID"] {
		t.Fatalf("basalt-csi attachments: %s (%v)", out, err)
	}
	out, err = exec.Command(binary, "nodes", "--config", cfgPath).Output()
	if err != nil || !strings.Contains(string(out), "node-a") || !strings.Contains(string(out), "zone-a") {
		t.Fatalf("basalt-csi nodes: %s (%v)", out, err)
	}

	unpublish(t, d.ctrl, vol, "node-a")
	unpublish(t, d.ctrl, vol, "node-a")  // already detached
	unpublish(t, d.ctrl, vol, "node-zz") // unknown node
	if got := publishedNodes(t, d.ctrl, vol); len(got) != 0 {
		t.Fatalf("published nodes after unpublish %v", got)
	}
	// Now node-b may have it.
	if _, err := publish(tctx(t), d.ctrl, vol, "node-b", snw, false); err != nil {
		t.Fatal(err)
	}
	unpublish(t, d.ctrl, vol, "node-b")
	del(t, d, vol)
	unpublish(t, d.ctrl, vol, "node-a") // unknown volume
	reg := registry(t, d)
	if left, err := reg.NodeAttachments(tctx(t), ""); err != nil || len(left) != 0 {
		t.Fatalf("attachment index entries left: %v %v", left, err)
	}
}

func TestPublishMultiNodeModes(t *testing.T) {
	d := startDriver(t, configYAML(), nil)
	startNodePlugin(t, d, "node-a", "zone-a", 16)
	startNodePlugin(t, d, "node-b", "zone-a", 16)
	startNodePlugin(t, d, "node-c", "zone-a", 16)

	// Reader-only: any number of nodes, read-only even when not asked.
	ro := create(t, d, "pvc-attach-mro", gib, map[string]string{"image": golden}, nil)
	mro := capFor(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY, false)
	for _, n := range []string{"node-a", "node-b"} {
		pc, err := publish(tctx(t), d.ctrl, ro.GetVolumeId(), n, mro, true)
		if err != nil || pc["mode"] != "ro" {
			t.Fatalf("ro publish to %s: %v %v", n, pc, err)
		}
	}
	if pc, err := publish(tctx(t), d.ctrl, ro.GetVolumeId(), "node-c", mro, false); err != nil || pc["mode"] != "ro" {
		t.Fatalf("reader-only without readonly flag: %v %v", pc, err)
	}
	if got := publishedNodes(t, d.ctrl, ro.GetVolumeId()); strings.Join(got, ",") != "node-a,node-b,node-c" {
		t.Fatalf("published nodes %v", got)
	}
	unpublish(t, d.ctrl, ro.GetVolumeId(), "") // detach from all nodes
	if got := publishedNodes(t, d.ctrl, ro.GetVolumeId()); len(got) != 0 {
		t.Fatalf("after detach-all: %v", got)
	}
	del(t, d, ro.GetVolumeId())

	// Single writer: one rw node plus readers.
	sw := create(t, d, "pvc-attach-msw", gib, nil, nil)
	msw := capFor(csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER, false)
	if _, err := publish(tctx(t), d.ctrl, sw.GetVolumeId(), "node-a", msw, false); err != nil {
		t.Fatal(err)
	}
	if _, err := publish(tctx(t), d.ctrl, sw.GetVolumeId(), "node-b", msw, true); err != nil {
		t.Fatal(err)
	}
	_, err := publish(tctx(t), d.ctrl, sw.GetVolumeId(), "node-c", msw, false)
	wantCode(t, err, codes.FailedPrecondition, "node-a")
	unpublish(t, d.ctrl, sw.GetVolumeId(), "")
	del(t, d, sw.GetVolumeId())

	// Multi writer: block only, any number of rw nodes.
	mw := create(t, d, "pvc-attach-mmw", gib, nil, nil)
	mmwBlock := capFor(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER, true)
	for _, n := range []string{"node-a", "node-b"} {
		if _, err := publish(tctx(t), d.ctrl, mw.GetVolumeId(), n, mmwBlock, false); err != nil {
			t.Fatal(err)
		}
	}
	_, err = publish(tctx(t), d.ctrl, mw.GetVolumeId(), "node-c", capFor(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER, false), false)
	wantCode(t, err, codes.InvalidArgument, "block")
	unpublish(t, d.ctrl, mw.GetVolumeId(), "")
	del(t, d, mw.GetVolumeId())
}

func TestPublishAttachLimit(t *testing.T) {
	d := startDriver(t, configYAML(), nil)
	startNodePlugin(t, d, "node-small", "zone-a", 2)
	snw := capFor(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, false)
	var vols []string
	for i := 0; i < 3; i++ {
		v := create(t, d, "pvc-limit-"+strconv.Itoa(i), 64<<20, nil, nil)
		vols = append(vols, v.GetVolumeId())
	}
	for _, v := range vols[:2] {
		if _, err := publish(tctx(t), d.ctrl, v, "node-small", snw, false); err != nil {
			t.Fatal(err)
		}
	}
	_, err := publish(tctx(t), d.ctrl, vols[2], "node-small", snw, false)
	wantCode(t, err, codes.ResourceExhausted, "node-small", "2")
	// Re-publishing one it already has is not a new attachment.
	if _, err := publish(tctx(t), d.ctrl, vols[0], "node-small", snw, false); err != nil {
		t.Fatal(err)
	}
	unpublish(t, d.ctrl, vols[0], "node-small")
	if _, err := publish(tctx(t), d.ctrl, vols[2], "node-small", snw, false); err != nil {
		t.Fatalf("after a detach the limit must allow one more: %v", err)
	}
	for _, v := range vols {
		unpublish(t, d.ctrl, v, "")
		del(t, d, v)
	}
}

// Two controllers (no shared in-process lock) race to publish one
// single-writer volume to two nodes: the compare-and-write lets exactly one win.
func TestPublishRaceAcrossControllers(t *testing.T) {
	d1 := startDriver(t, configYAML(), nil)
	d2 := startDriver(t, configYAML(), nil)
	startNodePlugin(t, d1, "node-a", "zone-a", 16)
	startNodePlugin(t, d1, "node-b", "zone-a", 16)
	snw := capFor(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, false)
	for round := 0; round < 5; round++ {
		v := create(t, d1, "pvc-race-pub-"+strconv.Itoa(round), 64<<20, nil, nil)
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, c := range []csi.ControllerClient{d1.ctrl, d2.ctrl} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = publish(tctx(t), c, v.GetVolumeId(), []string{"node-a", "node-b"}[i], snw, false)
			}()
		}
		wg.Wait()
		wins := 0
		for _, err := range errs {
			switch status.Code(err) {
			case codes.OK:
				wins++
			case codes.FailedPrecondition, codes.Aborted:
			default:
				t.Fatalf("round %d: unexpected %v", round, err)
			}
		}
		if wins != 1 {
			t.Fatalf("round %d: %d publishes won (%v)", round, wins, errs)
		}
		if got := publishedNodes(t, d1.ctrl, v.GetVolumeId()); len(got) != 1 {
			t.Fatalf("round %d: published to %v", round, got)
		}
		unpublish(t, d1.ctrl, v.GetVolumeId(), "")
		del(t, d1, v.GetVolumeId())
	}
	if left, _ := registry(t, d1).NodeAttachments(tctx(t), ""); len(left) != 0 {
		t.Fatalf("attachment index entries left: %v", left)
	}
}

// Attachments are durable: a controller killed with SIGKILL comes back and
// still sees them, and unpublish still works.
func TestAttachmentsSurviveControllerSIGKILL(t *testing.T) {
	d := startDriver(t, configYAML(), nil)
	startNodePlugin(t, d, "node-a", "zone-a", 16)
	sock := filepath.Join(t.TempDir(), "ctrl.sock")
	p := startBinary(t, cfgPath, sock)
	v := create(t, &testDriver{ctrl: p.ctrl}, "pvc-attach-kill", 64<<20, nil, nil)
	if _, err := publish(tctx(t), p.ctrl, v.GetVolumeId(), "node-a", capFor(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, false), false); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = p.cmd.Wait()
	p2 := startBinary(t, cfgPath, sock)
	if got := publishedNodes(t, p2.ctrl, v.GetVolumeId()); len(got) != 1 || got[0] != "node-a" {
		t.Fatalf("after restart: published nodes %v", got)
	}
	_, err := p2.ctrl.DeleteVolume(tctx(t), &csi.DeleteVolumeRequest{VolumeId: v.GetVolumeId()})
	wantCode(t, err, codes.FailedPrecondition, "node-a")
	unpublish(t, p2.ctrl, v.GetVolumeId(), "node-a")
	if _, err := p2.ctrl.DeleteVolume(tctx(t), &csi.DeleteVolumeRequest{VolumeId: v.GetVolumeId()}); err != nil {
		t.Fatal(err)
	}
	reg := registry(t, d)
	if left, _ := reg.NodeAttachments(tctx(t), "node-a"); len(left) != 0 {
		t.Fatalf("attachment records left: %v", left)
	}
	if _, _, err := regStore(t, d).Get(tctx(t), "basalt.attach."+strings.TrimPrefix(imageOf(t, v), "basalt-")); !errors.Is(err, records.ErrNotFound) {
		t.Fatalf("attachment object left: %v", err)
	}
}

func regStore(t *testing.T, d *testDriver) records.Store {
	cl, err := d.mgr.Registry()
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// racingStore lets another writer publish just before the last attachment
// is removed: the window in which "write empty, then delete" lost it.
type racingStore struct {
	records.Store
	race func()
}

func (s *racingStore) Delete(ctx context.Context, oid string) error {
	s.race()
	return s.Store.Delete(ctx, oid)
}

func (s *racingStore) DeleteVersion(ctx context.Context, oid string, version uint64) error {
	s.race()
	return s.Store.DeleteVersion(ctx, oid, version)
}

// Removing a volume's last attachment never deletes a publish that landed
// meanwhile: the removal is refused (the caller reloads and decides again).
func TestUnpublishLastAttachmentKeepsConcurrentPublish(t *testing.T) {
	d := startDriver(t, configYAML(), nil)
	ctx := tctx(t)
	uuid := volumeid.NewUUID()
	vol := "vol-" + uuid
	plain := registry(t, d)
	a, err := plain.LoadAttachments(ctx, vol, uuid)
	must(t, err)
	a.Items = []records.AttachmentRecord{{ID: "1", VolumeID: vol, Attachment: access.Attachment{Node: "node-a", Mode: "rw"}}}
	must(t, plain.SaveAttachments(ctx, uuid, a))
	defer func() { _ = plain.DeleteAttachments(context.Background(), uuid) }()

	store := &racingStore{Store: plain.Store}
	store.race = func() {
		store.race = func() {}
		// Another controller publishes to node-b on the current record.
		cur, err := plain.LoadAttachments(ctx, vol, uuid)
		must(t, err)
		cur.Items = append(cur.Items, records.AttachmentRecord{ID: "2", VolumeID: vol, Attachment: access.Attachment{Node: "node-b", Mode: "rw"}})
		must(t, plain.SaveAttachments(ctx, uuid, cur))
	}
	racing := records.NewRegistry(store)
	mine, err := racing.LoadAttachments(ctx, vol, uuid)
	must(t, err)
	mine.Items = nil // unpublish node-a: the last attachment as far as we saw
	if err := racing.SaveAttachments(ctx, uuid, mine); !errors.Is(err, records.ErrConflict) {
		t.Errorf("removing the last attachment under a concurrent publish: %v, want ErrConflict", err)
	}
	after, err := plain.LoadAttachments(ctx, vol, uuid)
	must(t, err)
	if _, ok := after.For("node-b"); !ok {
		t.Fatalf("the concurrent publish to node-b was lost: %+v", after.Items)
	}
}
