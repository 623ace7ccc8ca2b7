// Command bench measures Basalt against raw librbd and a shell baseline on
// a throwaway local Ceph cluster (test/ceph-cluster.sh), and writes a table,
// _output/bench/results.json and _output/bench/latency.svg.
//
//	make bench                      # defaults: N=200, concurrency 1,8,32
//	make bench-quick                # N=40, concurrency 1,8: under two minutes
//	make bench BENCH_ARGS='-parts create,delete -n 500'
//
// What is compared (in the same run, against the same cluster):
//
//   - CreateVolume (clone of images/golden@v1 + resize, over gRPC) against
//     rbd.CloneImage + open + Resize + close from this process (go-ceph);
//   - DeleteVolume against rbd.RemoveImage;
//   - CreateSnapshot against open + rbd_snap_create + close, and restores of
//     one snapshot (CreateVolume from it) against a format-2 clone + resize,
//     per concurrency level;
//   - ControllerPublish/Unpublish (no baseline);
//   - NodeStage+NodePublish and NodeUnpublish+NodeUnstage with the fuse
//     mapper against the same commands run one by one (rbd-fuse, losetup,
//     mkfs.ext4, mount, mount --bind and the reverse);
//   - the driver's RSS idle and with scale-n volumes, ListVolumes paging and
//     GetCapacity with those volumes.
//
// Every failed call is counted in the errors column; latencies are of the
// successful calls. Setup failures exit non-zero.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// allParts is what `make bench` runs; knownParts adds k8s (`make
// bench-k8s`: it needs the e2e's Kubernetes, half an hour to build cold).
var (
	allParts   = []string{"create", "delete", "snapshot", "publish", "node", "memory", "scale", "cache"}
	knownParts = append(append([]string(nil), allParts...), "k8s")
)

type options struct {
	n       int
	conc    []int
	size    int64
	nodeN   int
	scaleN  int
	parts   map[string]bool
	quick   bool
	out     string
	root    string // repository root
	runID   string
	render  string
	started time.Time
}

func (o *options) has(part string) bool { return o.parts[part] }

func parseOptions(args []string) (*options, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	n := fs.Int("n", 200, "volumes created and deleted per concurrency level (CreateVolume/DeleteVolume/publish)")
	conc := fs.String("concurrency", "1,8,32", "comma list of concurrency levels for create/delete")
	size := fs.Int64("size", 1<<30, "volume size in bytes")
	nodeN := fs.Int("node-n", 10, "volumes staged and published (fuse mapper), concurrency 1")
	scaleN := fs.Int("scale-n", 1000, "volumes that exist for the memory and scale measurements")
	parts := fs.String("parts", strings.Join(allParts, ","), "comma list of "+strings.Join(knownParts, ",")+" (k8s: not by default; runs make bench-k8s)")
	quick := fs.Bool("quick", false, "small run (N=40, concurrency 1,8, node-n 3, scale-n 200) in under two minutes")
	out := fs.String("out", "_output/bench", "output directory (driver log, results.json, latency.svg)")
	renderFrom := fs.String("render", "", "only redraw OUT/latency.svg from this results.json (no cluster, no measurements)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *quick { // explicit flags win over -quick's values
		if !set["n"] {
			*n = 40
		}
		if !set["concurrency"] {
			*conc = "1,8"
		}
		if !set["node-n"] {
			*nodeN = 3
		}
		if !set["scale-n"] {
			*scaleN = 200
		}
	}
	o := &options{n: *n, size: *size, nodeN: *nodeN, scaleN: *scaleN, quick: *quick, parts: map[string]bool{}}
	for _, s := range strings.Split(*conc, ",") {
		c, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || c < 1 {
			return nil, fmt.Errorf("-concurrency: %q is not a positive integer", s)
		}
		o.conc = append(o.conc, c)
	}
	for _, p := range strings.Split(*parts, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		known := false
		for _, a := range knownParts {
			known = known || a == p
		}
		if !known {
			return nil, fmt.Errorf("-parts: unknown part %q (known: %s)", p, strings.Join(knownParts, ","))
		}
		o.parts[p] = true
	}
	if o.n < 1 || o.nodeN < 0 || o.scaleN < 0 || o.size < 1<<20 {
		return nil, errors.New("-n must be >= 1, -node-n and -scale-n >= 0, -size >= 1 MiB")
	}
	root, err := repoRoot()
	if err != nil {
		return nil, err
	}
	o.root = root
	o.out = *out
	if !filepath.IsAbs(o.out) {
		o.out = filepath.Join(root, o.out)
	}
	o.render = *renderFrom
	o.started = time.Now()
	o.runID = strconv.FormatInt(o.started.Unix()%1000000, 36)
	return o, nil
}

// repoRoot is the directory holding go.mod, from the working directory up.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			if _, err := os.Stat(filepath.Join(dir, "test", "ceph-cluster.sh")); err == nil {
				return dir, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run from inside the basalt repository (no go.mod with test/ceph-cluster.sh above the working directory)")
		}
		dir = parent
	}
}

func main() {
	o, err := parseOptions(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if o.render != "" {
		if err := render(o.render, o.out); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	code := run(ctx, o)
	os.Exit(code)
}

// run sets up, measures, reports and always tears down. Exit codes: 0 all
// measured (per-operation errors are in the report), 1 setup or report
// failure, 130 interrupted.
func run(ctx context.Context, o *options) (code int) {
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	b := &bench{ctx: ctx, o: o}
	if o.has("k8s") {
		// Its own stack (the e2e's Kubernetes and Ceph), before this bench's.
		logf("== k8s (make bench-k8s)")
		if err := b.k8s(ctx); err != nil {
			logf("k8s: %v", err)
			b.failures = append(b.failures, "k8s: "+err.Error())
		}
		delete(o.parts, "k8s")
		if len(o.parts) == 0 {
			return b.report(&env{o: o})
		}
	}
	env := &env{o: o}
	defer func() {
		env.teardown()
		if ctx.Err() != nil {
			logf("interrupted")
			code = 130
		}
	}()
	if err := env.setup(ctx); err != nil {
		logf("setup failed: %v", err)
		return 1
	}
	b.env = env
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go b.others.watch(wctx, env.cephConf)
	b.memory.IdleRSSKiB, b.memory.IdleHWMKiB = env.rss()
	logf("driver idle RSS: %.1f MiB", kibToMiB(b.memory.IdleRSSKiB))

	steps := []struct {
		name string
		on   bool
		f    func(context.Context) error
	}{
		{"create/delete", o.has("create") || o.has("delete"), b.createDelete},
		{"snapshot/restore", o.has("snapshot"), b.snapshots},
		{"publish", o.has("publish"), b.publish},
		{"node", o.has("node") && o.nodeN > 0, b.node},
		{"memory/scale", (o.has("memory") || o.has("scale")) && o.scaleN > 0, b.scale},
		{"image cache", o.has("cache"), b.cacheBench},
	}
	for _, s := range steps {
		if !s.on || ctx.Err() != nil {
			continue
		}
		t0 := time.Now()
		logf("== %s", s.name)
		if err := s.f(ctx); err != nil {
			logf("%s: %v", s.name, err)
			b.failures = append(b.failures, fmt.Sprintf("%s: %v", s.name, err))
		}
		logf("== %s done in %s", s.name, time.Since(t0).Round(100*time.Millisecond))
	}
	b.memory.FinalRSSKiB, b.memory.FinalHWMKiB = env.rss()
	b.memory.DriverExited = env.driverExited()

	return b.report(env)
}

// report prints and writes the results; 1 if a part failed.
func (b *bench) report(env *env) int {
	b.env = env
	computeRatios(b.rows)
	sort.SliceStable(b.rows, func(i, j int) bool { return b.rows[i].order < b.rows[j].order })
	res := b.results()
	printTable(os.Stdout, res)
	if err := writeResults(b.o.out, res); err != nil {
		logf("writing results: %v", err)
		return 1
	}
	if len(b.failures) > 0 {
		return 1
	}
	return 0
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench %s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}
