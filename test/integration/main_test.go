// Package integration runs Basalt against real Ceph clusters started by the
// project's own script: two clusters on 127.0.0.1, three backends in two
// zones, and a golden image in the first cluster.
package integration

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/basalt-csi/basalt/pkg/backend"
	"github.com/basalt-csi/basalt/pkg/ceph"
	"github.com/basalt-csi/basalt/pkg/config"
	"github.com/basalt-csi/basalt/pkg/driver"
	"github.com/basalt-csi/basalt/pkg/provision"
)

const (
	golden     = "images/golden@v1"
	goldenText = "hello from the basalt golden image"
	gib        = int64(1 << 30)
)

var (
	c1, c2  *cluster
	workDir string
	cfgPath string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	workDir, err = os.MkdirTemp("", "basalt-it-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(workDir)
	start := time.Now()
	c1, err = startCluster("it1", "volumes", "fast", "images")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer stopCluster("it1")
	c2, err = startCluster("it2", "volumes", "remote")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer stopCluster("it2")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := script(ctx, "golden-image.sh", c1.Conf, "images", "golden", "v1", "64", goldenText); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// Basalt's own cephx users, made by the script the README tells
	// operators to run: every node plugin process runs as the node user.
	for _, u := range []struct {
		c     *cluster
		pools []string
	}{{c1, []string{"volumes", "fast", "images:ro"}}, {c2, []string{"volumes", "remote"}}} {
		if err := u.c.makeUsers(ctx, u.pools...); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	fmt.Fprintf(os.Stderr, "two clusters and a golden image ready in %v\n", time.Since(start).Round(time.Millisecond))
	for _, k := range []string{c1.Keyring, c2.Keyring, c1.NodeKeyring, c2.NodeKeyring, c1.CtlKeyring, c2.CtlKeyring} {
		if err := loadSecrets(k); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	// The tests look at the trash right after their deletes (trashLeft).
	provision.PurgeGrace = 0
	cfgPath = filepath.Join(workDir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(configYAML()), 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// configYAML: two backends in zone-a on cluster 1 (different pools and
// tiers), one in zone-b on cluster 2, which does not hold the golden image.
func configYAML(extra ...string) string {
	s := fmt.Sprintf(`backends:
  - name: a-std
    cephConf: %[1]s
    user: admin
    keyring: %[2]s
    pool: volumes
    zone: zone-a
    capabilities: {tier: standard}
    nodeUser: basalt-node
    nodeKeyring: %[5]s
  - name: a-fast
    cephConf: %[1]s
    user: admin
    keyring: %[2]s
    pool: fast
    zone: zone-a
    reservedPercentage: 5
    capabilities: {tier: fast}
    nodeUser: basalt-node
    nodeKeyring: %[5]s
  - name: b-std
    cephConf: %[3]s
    user: admin
    keyring: %[4]s
    pool: volumes
    zone: zone-b
    capabilities: {tier: standard}
    nodeUser: basalt-node
    nodeKeyring: %[6]s
`, c1.Conf, c1.Keyring, c2.Conf, c2.Keyring, c1.NodeKeyring, c2.NodeKeyring)
	for _, e := range extra {
		s += e
	}
	return s + "cephTimeoutSeconds: 20\nstatsIntervalSeconds: 2\n"
}

// testDriver is a controller served in-process on a unix socket.
type testDriver struct {
	conn *grpc.ClientConn
	ctrl csi.ControllerClient
	ids  csi.IdentityClient
	mgr  *backend.Manager
	prov *provision.Provisioner
	cfg  string // its configuration file, which its node plugins share
}

// wrapFn lets a test inject faults around a backend's real connection.
type wrapFn func(name string, c backend.Cluster) backend.Cluster

func startDriver(t *testing.T, yaml string, wrap wrapFn) *testDriver {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	timeout := time.Duration(cfg.CephTimeoutSeconds) * time.Second
	mgr := backend.NewManager(cfg, func(ctx context.Context, b config.Backend) (backend.Cluster, error) {
		c, err := ceph.Connect(ctx, b, timeout)
		if err != nil || wrap == nil {
			return c, err
		}
		return wrap(b.Name, c), nil
	}, log)
	ctx, cancel := context.WithCancel(context.Background())
	mgr.Refresh(ctx)
	go mgr.Run(ctx, time.Duration(cfg.StatsIntervalSeconds)*time.Second)
	prov := &provision.Provisioner{Backends: mgr, Attempts: cfg.ScheduleAttempts, Log: log}
	ids := &driver.Identity{Name: driver.DefaultName, Version: "test", Controller: true, Ready: func() bool { return len(mgr.Up()) > 0 }}
	sock := filepath.Join(t.TempDir(), "csi.sock")
	lis, err := driver.Listen("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := driver.NewGRPCServer(log, ids, driver.NewController(prov, log), nil)
	go func() { _ = srv.Serve(lis) }()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
		cancel()
		mgr.Close()
	})
	return &testDriver{conn: conn, ctrl: csi.NewControllerClient(conn), ids: csi.NewIdentityClient(conn), mgr: mgr, prov: prov, cfg: path}
}

// testWriter sends driver logs to the test log (shown with -v or on failure).
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	checkNoSecrets(w.t, "driver log", p)
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

// secrets are the cephx keys of the test clusters: no log line of any
// test's driver may contain one.
var secrets []string

func loadSecrets(keyring string) error {
	data, err := os.ReadFile(keyring)
	if err != nil {
		return err
	}
	for _, l := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), "="); ok && strings.TrimSpace(k) == "key" {
			secrets = append(secrets, strings.TrimSpace(v))
		}
	}
	if len(secrets) == 0 {
		return fmt.Errorf("no key in %s", keyring)
	}
	return nil
}

func checkNoSecrets(t *testing.T, what string, p []byte) {
	for _, s := range secrets {
		if bytes.Contains(p, []byte(s)) {
			t.Errorf("%s holds key material: %q", what, p)
		}
	}
}

func mountCap() []*csi.VolumeCapability {
	return []*csi.VolumeCapability{{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}}
}

func zoneReq(zone string) *csi.TopologyRequirement {
	seg := map[string]string{"topology.rbd.basalt.dev/zone": zone}
	return &csi.TopologyRequirement{Requisite: []*csi.Topology{{Segments: seg}}, Preferred: []*csi.Topology{{Segments: seg}}}
}

func tctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}
