// Command basalt-csi is the Basalt CSI driver: controller, node plugin, or both.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/basalt-csi/basalt/pkg/backend"
	"github.com/basalt-csi/basalt/pkg/ceph"
	"github.com/basalt-csi/basalt/pkg/config"
	"github.com/basalt-csi/basalt/pkg/driver"
	"github.com/basalt-csi/basalt/pkg/locks"
	"github.com/basalt-csi/basalt/pkg/metrics"
	"github.com/basalt-csi/basalt/pkg/node"
	"github.com/basalt-csi/basalt/pkg/node/mapper"
	"github.com/basalt-csi/basalt/pkg/provision"
	"github.com/basalt-csi/basalt/pkg/records"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type options struct {
	endpoint, mode, configPath, nodeID, zone, driverName, logFormat string
	zoneLabel, kubeconfig                                           string
	mapper, stateDir, instanceID, metricsAddr                       string
	maxVolumes                                                      int64
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "basalt-csi:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) > 0 && (args[0] == "attachments" || args[0] == "nodes" || args[0] == "snapshots") {
		return inspect(args[0], args[1:], os.Stdout)
	}
	if len(args) > 0 && args[0] == "images" {
		return images(args[1:], os.Stdout)
	}
	if len(args) > 0 && args[0] == "check" {
		return check(args[1:], os.Stdout)
	}
	var o options
	fs := flag.NewFlagSet("basalt-csi", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: basalt-csi [flags]            serve CSI\n       basalt-csi attachments [--volume ID] [--node ID] [-o json] --config FILE\n       basalt-csi nodes [-o json] --config FILE\n       basalt-csi snapshots [--volume ID] [-o json] --config FILE\n       basalt-csi images [-o json] --config FILE\n       basalt-csi images warm --image POOL/NAME@SNAP [--backend B] --config FILE\n       basalt-csi check [--repair] [-o json] --config FILE\n       basalt-csi check --node [--repair] [-o json] [--state-dir DIR] [--mapper M]\n\nflags:\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&o.endpoint, "endpoint", "unix:///var/lib/kubelet/plugins/rbd.basalt.dev/csi.sock", "CSI endpoint: unix:///path or tcp://host:port")
	fs.StringVar(&o.mode, "mode", "all", "which services to serve: controller, node or all")
	fs.StringVar(&o.configPath, "config", "/etc/basalt/config.yaml", "backend configuration (YAML)")
	fs.StringVar(&o.nodeID, "node-id", "", "this node's ID (node and all modes; default: the host name)")
	fs.StringVar(&o.zone, "zone", "", "this node's zone (value of topology.rbd.basalt.dev/zone)")
	fs.StringVar(&o.zoneLabel, "zone-from-node-label", "", "take this node's zone from this label of its Kubernetes Node object (named --node-id), e.g. topology.kubernetes.io/zone; overrides --zone")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "with --zone-from-node-label: the API server's kubeconfig (default: in-cluster credentials)")
	fs.StringVar(&o.driverName, "driver-name", driver.DefaultName, "CSI driver name")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&o.mapper, "mapper", "auto", "how the node maps images: auto, krbd, nbd or fuse")
	fs.StringVar(&o.stateDir, "state-dir", "/var/lib/basalt", "node plugin state: staging records, rbd-fuse mounts, key files")
	fs.Int64Var(&o.maxVolumes, "max-volumes-per-node", 64, "attach limit reported by NodeGetInfo")
	fs.StringVar(&o.instanceID, "instance-id", "", "this controller's identity across restarts, unique among running controllers: a restart blocklists the Ceph clients its previous incarnation left (default: the host name, i.e. the pod name)")
	fs.StringVar(&o.metricsAddr, "metrics-address", "", "serve Prometheus metrics at http://ADDRESS/metrics, e.g. :9090 (off when empty; README, \"Monitoring\")")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *showVersion {
		fmt.Println(version)
		return nil
	}
	log := newLogger(o.logFormat)
	switch o.mode {
	case "controller", "node", "all":
	default:
		return fmt.Errorf("--mode must be controller, node or all, not %q", o.mode)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return serve(ctx, o, log)
}

// heartbeatInterval is how often a node plugin refreshes its registration.
const heartbeatInterval = 30 * time.Second

func newNodeService(o options, prov *provision.Provisioner, log *slog.Logger) (*node.Service, error) {
	name, err := mapper.Choose(o.mapper, mapper.Host{})
	if err != nil {
		return nil, err
	}
	run := mapper.Exec{}
	var m mapper.Mapper
	switch name {
	case "krbd":
		if err := os.MkdirAll(keyDir(o), 0o700); err != nil {
			return nil, err
		}
		m = mapper.NewKRBD(run, keyDir(o))
	case "nbd":
		m = mapper.NewNBD(run)
	default:
		m = mapper.NewFUSE(run, filepath.Join(o.stateDir, "fuse"))
	}
	log.Info("node plugin", "node", o.nodeID, "zone", o.zone, "mapper", m.Name(), "stateDir", o.stateDir)
	return &node.Service{
		NodeID: o.nodeID, Mapper: m, Mounts: node.NewMounts(),
		Store: &node.Store{Dir: filepath.Join(o.stateDir, "volumes")},
		Locks: prov.Locks, Log: log, Lookups: driver.NodeLookups(prov),
	}, nil
}

// keyDir holds the krbd mapper's short-lived key files.
func keyDir(o options) string { return filepath.Join(o.stateDir, "keys") }

func newManager(cfg *config.Config, log *slog.Logger) *backend.Manager {
	timeout := time.Duration(cfg.CephTimeoutSeconds) * time.Second
	return backend.NewManager(cfg, func(ctx context.Context, b config.Backend) (backend.Cluster, error) {
		return ceph.Connect(ctx, b, timeout)
	}, log)
}

// recoverGrace leaves young interrupted creates to whoever may still be
// working on them (another controller replica, or a CO retry in flight).
const recoverGrace = 2 * time.Minute

// flattenInterval is how often the flatten queue is re-read besides the
// wake-ups creates send (work a crash or a down backend left queued).
const flattenInterval = time.Minute

// sweepInterval is how often the images of deleted volumes are looked at
// besides the wake-ups deletes send.
const sweepInterval = 30 * time.Second

// recoverLoop undoes creates interrupted by a crash: once at start (as soon
// as the registry backend answers) and then every few minutes.
func recoverLoop(ctx context.Context, prov *provision.Provisioner, log *slog.Logger) {
	for {
		n, err := prov.Recover(ctx, recoverGrace)
		switch {
		case err != nil:
			log.Warn("recovery of interrupted creates postponed", "error", err)
		case n > 0:
			log.Info("undid interrupted creates", "count", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Minute):
		}
	}
}

func newLogger(format string) *slog.Logger {
	if format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, nil))
}

func serve(ctx context.Context, o options, log *slog.Logger) error {
	ids := &driver.Identity{Name: o.driverName, Version: version}
	var cs *driver.Controller
	var ns *driver.Node
	if o.mode != "controller" {
		if o.nodeID == "" {
			h, err := os.Hostname()
			if err != nil {
				return fmt.Errorf("--node-id is not set and the host name is unknown: %w", err)
			}
			o.nodeID = h
		}
		if strings.ContainsAny(o.nodeID, "/ ") {
			return fmt.Errorf("--node-id %q must not contain '/' or spaces", o.nodeID)
		}
	}
	// Both sides need the backends: the controller to provision, the node to
	// register itself and check attachments in the registry backend.
	cfg, err := config.Load(o.configPath)
	if err != nil {
		return err
	}
	if o.mode == "node" {
		cfg.UseNodeIdentity() // least privilege: never the controller's key
	}
	mgr := newManager(cfg, log)
	mgr.NoCapacity = o.mode == "node"
	log.Info("connecting to backends", "config", cfg.Path, "backends", mgr.Names())
	mgr.Refresh(ctx)
	if len(mgr.Up()) == 0 {
		log.Error("no backend is reachable yet; Probe reports not ready until one is", "backends", mgr.Names())
	}
	go mgr.Run(ctx, time.Duration(cfg.StatsIntervalSeconds)*time.Second)
	defer mgr.Close()
	ids.Ready = func() bool { return len(mgr.Up()) > 0 }
	if o.mode != "node" {
		// The scheduler's view; a node plugin does not schedule (its
		// backends carry no capacity), and two views would blur alerts.
		metrics.RegisterBackends(mgr.Scheduler().Snapshot)
	}
	if o.metricsAddr != "" {
		addr, err := metrics.Serve(ctx, o.metricsAddr, log)
		if err != nil {
			return err
		}
		log.Info("serving metrics", "url", "http://"+addr.String()+"/metrics")
	}
	prov := &provision.Provisioner{Backends: mgr, Attempts: cfg.ScheduleAttempts, Log: log, Locks: locks.New()}

	if o.mode != "node" {
		cs = driver.NewController(prov, log)
		ids.Controller = true
		if o.instanceID == "" {
			if o.instanceID, err = os.Hostname(); err != nil {
				return fmt.Errorf("--instance-id is not set and the host name is unknown: %w", err)
			}
		}
		prov.Instance = "controller@" + o.instanceID
		if err := prov.FencePrevious(ctx, prov.Instance); err != nil {
			log.Warn("could not fence the previous incarnation; its watches expire in about 30 s", "error", err)
		}
		metrics.RegisterCensus(prov.Census)
		go recoverLoop(ctx, prov, log)
		go prov.RunFlattener(ctx, flattenInterval)
		go prov.RunSweeper(ctx, sweepInterval)
	}
	if o.mode != "controller" {
		source := "--zone"
		if o.zoneLabel != "" {
			source = "node label " + o.zoneLabel
			if o.zone, err = nodeZone(ctx, o.nodeID, o.zoneLabel, o.kubeconfig); err != nil {
				return err
			}
		}
		logZone(log, o.zone, source, cfg.Backends)
		svc, err := newNodeService(o, prov, log)
		if err != nil {
			return err
		}
		o.mapper = svc.Mapper.Name()
		metrics.RegisterStaged(o.mapper, svc.Store.Count)
		ns = &driver.Node{NodeID: o.nodeID, Zone: o.zone, MaxVolumes: o.maxVolumes, Svc: svc}
		go node.Heartbeat(ctx, mgr, records.Node{
			ID: o.nodeID, Zone: o.zone, MaxVolumes: o.maxVolumes, Mapper: o.mapper, Version: version,
		}, heartbeatInterval, time.Duration(cfg.CephTimeoutSeconds)*time.Second, log)
		// Re-establish what this node staged before it restarted, before serving.
		healed, failed := svc.HealAll(ctx)
		log.Info("checked staged volumes", "healed", healed, "failed", failed)
	}
	lis, err := driver.Listen(o.endpoint)
	if err != nil {
		return err
	}
	srv := driver.NewGRPCServer(log, ids, controllerOrNil(cs), nodeOrNil(ns))
	log.Info("serving", "endpoint", o.endpoint, "mode", o.mode, "driver", o.driverName, "version", version)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	select {
	case <-ctx.Done():
		log.Info("shutting down")
		done := make(chan struct{})
		go func() { srv.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			srv.Stop()
		}
		return nil
	case err := <-errc:
		if errors.Is(err, context.Canceled) {
			return nil
		}
		return err
	}
}
