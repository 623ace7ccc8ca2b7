package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

const cacheCluster = "bench2"

// cacheBench measures creates from the golden image into a second cluster,
// which does not hold it, through a second controller (so that the other
// parts' placements are not changed by its backends):
//   - cache off: every create copies the image (backend remote-copy);
//   - cache miss: the first create of a new golden image copies it once into
//     the cache and clones the copy (backend remote, one new image each);
//   - cache hit: later creates clone the cache entry, against the baseline
//     of the same clone done with raw librbd in that cluster (format-2
//     clone of the cache image's snapshot + resize), per concurrency level.
func (b *bench) cacheBench(ctx context.Context) error {
	e, o := b.env, b.o
	script := filepath.Join(o.root, "test", "ceph-cluster.sh")
	if _, err := e.script(ctx, 2*time.Minute, script, "stop", cacheCluster); err != nil {
		return err
	}
	defer func() {
		if _, err := e.script(context.Background(), 2*time.Minute, script, "stop", cacheCluster); err != nil {
			b.noteCleanup("stopping cluster %s: %v", cacheCluster, err)
		}
	}()
	out, err := e.script(ctx, 3*time.Minute, script, "start", cacheCluster)
	if err != nil {
		return err
	}
	vars := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), "="); ok {
			vars[k] = v
		}
	}
	conf2, key2 := vars["CEPH_CONF"], vars["CEPH_KEYRING"]
	if conf2 == "" || key2 == "" {
		return fmt.Errorf("ceph-cluster.sh start %s printed no CEPH_CONF/CEPH_KEYRING: %q", cacheCluster, out)
	}
	for _, pool := range []string{"volumes", "copies"} {
		if _, err := e.script(ctx, 2*time.Minute, script, "create-pool", cacheCluster, pool); err != nil {
			return err
		}
	}
	conn, err := dialRados(ctx, conf2, key2)
	if err != nil {
		return err
	}
	defer func() { go conn.Shutdown() }()
	vols2, err := conn.OpenIOContext("volumes")
	if err != nil {
		return err
	}
	defer vols2.Destroy()

	cfg := filepath.Join(e.tmp, "config-cache.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`backends:
  - name: local
    cephConf: %[1]s
    user: admin
    keyring: %[2]s
    pool: volumes
    zone: zone-a
    maxOverSubscriptionRatio: 1000
  - name: remote
    cephConf: %[3]s
    user: admin
    keyring: %[4]s
    pool: volumes
    zone: zone-b
    maxOverSubscriptionRatio: 1000
    imageCache: {enabled: true, maxCount: 100}
  - name: remote-copy
    cephConf: %[3]s
    user: admin
    keyring: %[4]s
    pool: copies
    zone: zone-b
    maxOverSubscriptionRatio: 1000
statsIntervalSeconds: 30
`, e.cephConf, e.keyring, conf2, key2)), 0o600); err != nil {
		return err
	}
	ctrl, stop, err := e.startController(ctx, cfg, "cache")
	if err != nil {
		return err
	}
	defer stop()

	var created []string
	defer func() { b.deleteAllWith(ctrl, created) }()
	create := func(ctx context.Context, name, image, backend string) error {
		r, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{
			Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: o.size},
			VolumeCapabilities: []*csi.VolumeCapability{mountCap()},
			Parameters:         map[string]string{"image": image, "backend": backend},
		})
		if id := r.GetVolume().GetVolumeId(); id != "" {
			b.mu.Lock()
			created = append(created, id)
			b.mu.Unlock()
		}
		return err
	}

	// Cache off: a full copy per create. First, while the cluster holds no
	// entry (a backend without a cache of its own still clones an entry
	// another backend of its cluster keeps).
	if err := create(ctx, b.nameOf("warm-copy"), goldenSpec, "remote-copy"); err != nil {
		return fmt.Errorf("warm-up create: %w", err) // untimed: connects
	}
	nc := min(o.n, 10)
	bt := b.withCPU(implBasalt, func() *batch {
		return runBatch(ctx, nc, 1, func(ctx context.Context, i int) error {
			return create(ctx, b.nameOf("copy", i), goldenSpec, "remote-copy")
		})
	})
	b.addRow("CreateVolume, other cluster, cache off", implBasalt, false, bt, "a sparse copy of the 64 MiB golden image per create")
	// Untimed: connect the cached backend and fill the golden image's entry,
	// which the hits below clone.
	if err := create(ctx, b.nameOf("fill"), goldenSpec, "remote"); err != nil {
		return fmt.Errorf("filling the cache: %w", err)
	}

	// Cache misses: a new golden image each (made untimed), copied once.
	goldens := make([]string, nc)
	for i := range goldens {
		name := fmt.Sprintf("golden-%s-%d", o.runID, i)
		if _, err := e.script(ctx, 2*time.Minute, filepath.Join(o.root, "test", "golden-image.sh"), e.cephConf, "images", name, "v1", "64"); err != nil {
			return err
		}
		goldens[i] = "images/" + name + "@v1"
	}
	bt = b.withCPU(implBasalt, func() *batch {
		return runBatch(ctx, nc, 1, func(ctx context.Context, i int) error {
			return create(ctx, b.nameOf("miss", i), goldens[i], "remote")
		})
	})
	b.addRow("CreateVolume, other cluster, cache miss", implBasalt, false, bt, "first create of an image: copy into the cache, then clone")

	// Cache hits, against raw clones of the same cache image.
	cacheImage, err := b.cacheImageOf(ctx, cfg, goldenSpec)
	if err != nil {
		return err
	}
	for li, c := range o.conc {
		names := make([]string, o.n)
		hits := func() {
			bt := b.withCPU(implBasalt, func() *batch {
				return runBatch(ctx, o.n, c, func(ctx context.Context, i int) error {
					return create(ctx, b.nameOf("hit", c, i), goldenSpec, "remote")
				})
			})
			b.addRow("CreateVolume, other cluster, cache hit", implBasalt, true, bt, "clone of the cache entry, over gRPC")
		}
		raw := func() {
			bt := b.withCPU(implBaseline, func() *batch {
				return runBatch(ctx, o.n, c, func(ctx context.Context, i int) error {
					name := b.nameOf("rawhit", c, i)
					err := cephCall(ctx, "clone", func() error { return rawClone(vols2, cacheImage, "cache", name, uint64(o.size)) })
					if err == nil {
						names[i] = name
					}
					return err
				})
			})
			b.addRow("CreateVolume, other cluster, cache hit", implBaseline, true, bt, "librbd in that cluster: rbd.CloneImage (format 2) of the cache image + Resize")
		}
		alternate(li, hits, raw)
		for _, n := range names {
			if n != "" {
				b.cleanupErr("raw clone", rbd.RemoveImage(vols2, n))
			}
		}
	}
	return nil
}

// cacheImageOf asks `basalt-csi images` for the cache image of spec.
func (b *bench) cacheImageOf(ctx context.Context, cfg, spec string) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, err := exec.CommandContext(cctx, filepath.Join(b.o.root, "bin", "basalt-csi"), "images", "--config", cfg, "-o", "json").Output()
	if err != nil {
		return "", fmt.Errorf("basalt-csi images: %w", err)
	}
	var list struct {
		Entries []struct{ Image, Source string }
	}
	if err := json.Unmarshal(out, &list); err != nil {
		return "", err
	}
	for _, e := range list.Entries {
		if e.Source == spec {
			return e.Image, nil
		}
	}
	return "", fmt.Errorf("basalt-csi images lists no entry for %s: %s", spec, out)
}

// deleteAllWith deletes volumes through another controller (untimed).
func (b *bench) deleteAllWith(ctrl csi.ControllerClient, ids []string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	runBatch(ctx, len(ids), 8, func(ctx context.Context, i int) error {
		_, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: ids[i]})
		b.cleanupErr("DeleteVolume", err)
		return err
	})
}

// startController runs a second basalt-csi, controller only, with cfg; stop
// ends it.
func (e *env) startController(ctx context.Context, cfg, name string) (csi.ControllerClient, func(), error) {
	bin := filepath.Join(e.o.root, "bin", "basalt-csi")
	logFile, err := os.Create(filepath.Join(e.o.out, "driver-"+name+".log"))
	if err != nil {
		return nil, nil, err
	}
	sock := filepath.Join(e.tmp, name+".sock")
	cmd := exec.Command(bin, "--mode=controller", "--instance-id", "bench-"+name, "--endpoint", "unix://"+sock, "--config", cfg)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, nil, err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	stop := func() {
		if conn != nil {
			_ = conn.Close()
		}
		_ = syscall.Kill(cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		logFile.Close()
	}
	if err != nil {
		stop()
		return nil, nil, err
	}
	ident := csi.NewIdentityClient(conn)
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		r, err := ident.Probe(cctx, &csi.ProbeRequest{})
		cancel()
		if err == nil && r.GetReady().GetValue() {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			stop()
			return nil, nil, fmt.Errorf("controller %s not ready (last: %v): %s", name, err, tail(readFile(logFile.Name()), 10))
		}
	}
	return csi.NewControllerClient(conn), stop, nil
}
