package integration

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/basalt-csi/basalt/pkg/backend"
	"github.com/basalt-csi/basalt/pkg/ceph"
	"github.com/basalt-csi/basalt/pkg/config"
	"github.com/basalt-csi/basalt/pkg/records"
)

// A monitor stall longer than the Ceph timeout makes the capacity refresh
// mark the backend down and close its connection while requests still hold
// it and a timed-out call still runs in it. Before connections were
// reference-counted this freed librados under those calls (SIGSEGV in
// rados_ioctx_create(NULL)); now the calls fail with a retryable error, the
// connection is freed after the last of them, and the backend comes back.
func TestMonitorStallClosesConnectionSafely(t *testing.T) {
	cfg, err := config.Parse("stall.yaml", []byte(fmt.Sprintf(`backends:
  - name: b-std
    cephConf: %s
    user: admin
    keyring: %s
    pool: volumes
    zone: zone-b
cephTimeoutSeconds: 2
statsIntervalSeconds: 60
`, c2.Conf, c2.Keyring)))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	mgr := backend.NewManager(cfg, func(ctx context.Context, b config.Backend) (backend.Cluster, error) {
		return ceph.Connect(ctx, b, 2*time.Second)
	}, log)
	mgr.Provisioned = nil // the registry is this same stalled backend
	t.Cleanup(mgr.Close)
	ctx := tctx(t)
	mgr.Refresh(ctx)
	held, _, err := mgr.Get("b-std")
	if err != nil {
		t.Fatalf("backend not up: %v", err)
	}

	pause(t, c2, "mon")
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			resume(t, c2, "mon")
		}
	})

	// A request that holds the connection and keeps calling it, as the
	// controller's handlers and heartbeat do.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
				var err error
				if i%2 == 0 {
					_, err = held.Stats(cctx)
				} else {
					_, _, err = held.Get(cctx, "basalt.stall-probe")
				}
				cancel()
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}

	mgr.Refresh(ctx) // times out on the stalled monitor: down, connection closed
	if _, _, err := mgr.Get("b-std"); !errors.Is(err, backend.ErrDown) {
		t.Fatalf("after a stalled refresh Get = %v, want ErrDown", err)
	}
	time.Sleep(time.Second) // calls go on against the closed connection
	if _, _, err := held.Get(ctx, "basalt.stall-probe"); !errors.Is(err, backend.ErrDown) {
		t.Errorf("a call on the closed connection returned %v, want an error wrapping ErrDown (retryable)", err)
	}
	resume(t, c2, "mon")
	resumed = true
	close(stop)
	wg.Wait()

	mu.Lock()
	for _, err := range errs {
		// The OSD still answers reads: "not found" for the probe object
		// is a real answer from before the close.
		if !errors.Is(err, backend.ErrDown) && !errors.Is(err, ceph.ErrTimeout) && !errors.Is(err, records.ErrNotFound) {
			t.Errorf("call during the stall failed with %v: want a timeout, ErrDown or not found", err)
		}
	}
	mu.Unlock()

	deadline := time.Now().Add(30 * time.Second)
	for {
		mgr.Refresh(ctx)
		if _, _, err := mgr.Get("b-std"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("backend did not come back after the monitor resumed")
		}
		time.Sleep(500 * time.Millisecond)
	}
	fresh, _, _ := mgr.Get("b-std")
	if _, err := fresh.Stats(ctx); err != nil {
		t.Fatalf("new connection after the stall: %v", err)
	}
}

func pause(t *testing.T, c *cluster, daemon string) {
	t.Helper()
	if _, err := script(context.Background(), "ceph-cluster.sh", "pause", c.Name, daemon); err != nil {
		t.Fatal(err)
	}
}

func resume(t *testing.T, c *cluster, daemon string) {
	t.Helper()
	if _, err := script(context.Background(), "ceph-cluster.sh", "resume", c.Name, daemon); err != nil {
		t.Fatal(err)
	}
}

// Outages answer Unavailable (retry), never ResourceExhausted (which makes
// Kubernetes reschedule the pod) or NotFound: a backend that is down might
// be the one that could take the volume, or hold its image.
func TestOutageCodesAreRetryable(t *testing.T) {
	dead := filepath.Join(t.TempDir(), "dead.conf")
	if err := os.WriteFile(dead, []byte("[global]\nmon_host = 127.0.0.1:1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDriver(t, fmt.Sprintf(`backends:
  - name: b-std
    cephConf: %s
    user: admin
    keyring: %s
    pool: volumes
    zone: zone-b
  - name: dead
    cephConf: %s
    user: admin
    keyring: %s
    pool: volumes
    zone: zone-dead
cephTimeoutSeconds: 2
statsIntervalSeconds: 60
`, c2.Conf, c2.Keyring, dead, c2.Keyring), nil)
	ctx := tctx(t)
	if down := d.mgr.Down(); len(down) != 1 || down[0] != "dead" {
		t.Fatalf("down backends: %v", down)
	}
	_, err := d.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "outage-zone", VolumeCapabilities: mountCap(), AccessibilityRequirements: zoneReq("zone-dead")})
	wantCode(t, err, codes.Unavailable, "dead")
	// The golden image is in no reachable cluster, but the dead backend's
	// cluster was never searched.
	_, err = d.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "outage-image", VolumeCapabilities: mountCap(), Parameters: map[string]string{"image": golden}})
	wantCode(t, err, codes.Unavailable, "dead")
	// Nothing was reserved by the refused creates.
	if p, _ := registry(t, d).Pending(ctx, records.KindVolume, 10); len(p) != 0 {
		t.Fatalf("pending creates left: %v", p)
	}
}

// retryable are the answers a CO retries without giving up on the volume.
func retryable(err error) bool {
	switch status.Code(err) {
	case codes.OK, codes.Unavailable, codes.DeadlineExceeded, codes.Aborted:
		return true
	}
	return false
}

// A load of creates, snapshots, deletes, publishes and unpublishes while
// the monitor and the OSD of the backend's cluster are stalled (SIGSTOP)
// for longer than the Ceph timeout: no crash, every answer is a success or
// a retryable code, the CO's retries after the stall succeed, and once
// everything is deleted nothing is left.
func TestOutageUnderLoad(t *testing.T) {
	d := startDriver(t, strings.Replace(configYAML(), "cephTimeoutSeconds: 20", "cephTimeoutSeconds: 3", 1), nil)
	pin := map[string]string{"image": golden, "backend": "a-std"}
	type op struct {
		name string
		run  func(ctx context.Context) error
	}
	var mu sync.Mutex
	volumes := map[string]string{} // name -> volume ID
	snaps := map[string]string{}   // name -> snapshot ID
	create := func(name string) op {
		return op{"create " + name, func(ctx context.Context) error {
			r, err := d.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, VolumeCapabilities: mountCap(), Parameters: pin})
			if err == nil {
				mu.Lock()
				volumes[name] = r.GetVolume().GetVolumeId()
				mu.Unlock()
			}
			return err
		}}
	}
	snapshot := func(name, vol string) op {
		return op{"snapshot " + name, func(ctx context.Context) error {
			r, err := d.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: vol})
			if err == nil {
				mu.Lock()
				snaps[name] = r.GetSnapshot().GetSnapshotId()
				mu.Unlock()
			}
			return err
		}}
	}
	const node = "load-node"
	must(t, registry(t, d).RegisterNode(tctx(t), records.Node{ID: node, Zone: "zone-a"}))
	publishOp := func(vol string, on bool) op {
		if on {
			return op{"publish " + vol, func(ctx context.Context) error {
				_, err := d.ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: vol, NodeId: node, VolumeCapability: mountCap()[0]})
				return err
			}}
		}
		return op{"unpublish " + vol, func(ctx context.Context) error {
			_, err := d.ctrl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: vol, NodeId: node})
			return err
		}}
	}
	deleteOp := func(name string) op {
		return op{"delete " + name, func(ctx context.Context) error {
			mu.Lock()
			id := volumes[name]
			mu.Unlock()
			_, err := d.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
			if err == nil {
				mu.Lock()
				delete(volumes, name)
				mu.Unlock()
			}
			return err
		}}
	}
	// A base volume for the snapshots, volumes to delete and to publish,
	// one published to unpublish: made before the stall.
	for _, name := range []string{"load-base", "load-del-0", "load-del-1", "load-pub-0", "load-pub-1", "load-unpub"} {
		if err := create(name).run(tctx(t)); err != nil {
			t.Fatal(err)
		}
	}
	must(t, publishOp(volumes["load-unpub"], true).run(tctx(t)))
	var ops []op
	for i := 0; i < 12; i++ {
		ops = append(ops, create(fmt.Sprintf("load-%d", i)))
		if i%3 == 0 {
			ops = append(ops, snapshot(fmt.Sprintf("load-snap-%d", i), volumes["load-base"]))
		}
	}
	ops = append(ops, deleteOp("load-del-0"), deleteOp("load-del-1"),
		publishOp(volumes["load-pub-0"], true), publishOp(volumes["load-pub-1"], true), publishOp(volumes["load-unpub"], false))
	failed := make([]bool, len(ops))
	var wg sync.WaitGroup
	paused := make(chan struct{})
	go func() {
		time.Sleep(300 * time.Millisecond)
		pause(t, c1, "osd")
		pause(t, c1, "mon")
		close(paused)
		time.Sleep(8 * time.Second)
		resume(t, c1, "mon")
		resume(t, c1, "osd")
	}()
	t.Cleanup(func() {
		for _, daemon := range []string{"mon", "osd"} {
			_, _ = script(context.Background(), "ceph-cluster.sh", "resume", c1.Name, daemon)
		}
	})
	for i, o := range ops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 1 {
				<-paused // half of them start inside the stall
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := o.run(ctx); err != nil {
				if !retryable(err) {
					t.Errorf("%s during the stall: %v (not retryable)", o.name, err)
				}
				failed[i] = true
			}
		}()
	}
	wg.Wait()
	time.Sleep(9 * time.Second) // the stall is over
	nFailed := 0
	for i, o := range ops {
		if !failed[i] {
			continue
		}
		nFailed++
		deadline := time.Now().Add(2 * time.Minute)
		for {
			err := o.run(tctx(t))
			if err == nil {
				break
			}
			if !retryable(err) || time.Now().After(deadline) {
				t.Fatalf("retry of %s after the stall: %v", o.name, err)
			}
			time.Sleep(2 * time.Second)
		}
	}
	t.Logf("%d of %d operations failed during the stall, all retried successfully", nFailed, len(ops))
	if _, err := d.ids.Probe(tctx(t), &csi.ProbeRequest{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"load-pub-0", "load-pub-1"} {
		must(t, publishOp(volumes[name], false).run(tctx(t)))
	}
	if atts, err := registry(t, d).NodeAttachments(tctx(t), node); err != nil || len(atts) > 0 {
		t.Fatalf("attachments of %s left: %v %v", node, atts, err)
	}
	for _, id := range snaps {
		delSnap(t, d, id)
	}
	for _, id := range volumes {
		deadline := time.Now().Add(2 * time.Minute)
		for {
			_, err := d.ctrl.DeleteVolume(tctx(t), &csi.DeleteVolumeRequest{VolumeId: id})
			if err == nil {
				break
			}
			if !retryable(err) && status.Code(err) != codes.FailedPrecondition || time.Now().After(deadline) {
				t.Fatalf("delete %s: %v", id, err)
			}
			time.Sleep(2 * time.Second)
		}
	}
	if left := leftovers(t, d, c1, "volumes"); len(left) > 0 {
		t.Fatalf("left behind after the outage: %v", left)
	}
	if p, _ := registry(t, d).Pending(tctx(t), records.KindVolume, 100); len(p) > 0 {
		t.Fatalf("pending creates left: %v", p)
	}
}
