package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// results is what results.json holds.
type results struct {
	Machine         machine           `json:"machine"`
	Options         map[string]any    `json:"options"`
	Started         time.Time         `json:"started"`
	Interrupted     bool              `json:"interrupted"`
	DurationS       float64           `json:"duration_s"`
	Rows            []*row            `json:"rows"`
	Memory          memoryOut         `json:"memory"`
	Targets         []target          `json:"targets"`
	Interference    interference      `json:"interference"`
	SetupFailures   []string          `json:"setup_failures,omitempty"`
	CleanupProblems []string          `json:"cleanup_problems,omitempty"`
	Files           map[string]string `json:"files"`
}

type memoryOut struct {
	memoryFigures
	IdleRSSMiB  float64 `json:"idle_rss_mib"`
	ScaleRSSMiB float64 `json:"scale_rss_mib"`
	FinalRSSMiB float64 `json:"final_rss_mib"`
	PeakRSSMiB  float64 `json:"peak_rss_mib"`
}

// target is one goal of the project's performance issue.
type target struct {
	Name  string `json:"name"`
	Goal  string `json:"goal"`
	Value string `json:"value"`
	Met   *bool  `json:"met"` // null: not measured in this run
}

// MarshalJSON writes NaN (no successful call) as null.
func (r *row) MarshalJSON() ([]byte, error) {
	type plain row
	f := func(v float64) *float64 {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return nil
		}
		v = math.Round(v*1000) / 1000
		return &v
	}
	g := func(v *float64) *float64 {
		if v == nil {
			return nil
		}
		return f(*v)
	}
	return json.Marshal(struct {
		*plain
		RatioP50  *float64 `json:"ratio_p50,omitempty"`
		RatioOps  *float64 `json:"ratio_throughput,omitempty"`
		MinMs     *float64 `json:"min_ms"`
		P50Ms     *float64 `json:"p50_ms"`
		P90Ms     *float64 `json:"p90_ms"`
		P99Ms     *float64 `json:"p99_ms"`
		MaxMs     *float64 `json:"max_ms"`
		MeanMs    *float64 `json:"mean_ms"`
		WallMs    *float64 `json:"wall_ms"`
		OpsPerSec *float64 `json:"ops_per_s"`
	}{(*plain)(r), g(r.RatioP50), g(r.RatioOps), f(r.MinMs), f(r.P50Ms), f(r.P90Ms), f(r.P99Ms), f(r.MaxMs), f(r.MeanMs), f(r.WallMs), f(r.OpsPerSec)})
}

// UnmarshalJSON reads what MarshalJSON wrote (null is NaN), for -render.
func (r *row) UnmarshalJSON(data []byte) error {
	type plain row
	var aux struct {
		*plain
		RatioP50  *float64 `json:"ratio_p50,omitempty"`
		RatioOps  *float64 `json:"ratio_throughput,omitempty"`
		MinMs     *float64 `json:"min_ms"`
		P50Ms     *float64 `json:"p50_ms"`
		P90Ms     *float64 `json:"p90_ms"`
		P99Ms     *float64 `json:"p99_ms"`
		MaxMs     *float64 `json:"max_ms"`
		MeanMs    *float64 `json:"mean_ms"`
		WallMs    *float64 `json:"wall_ms"`
		OpsPerSec *float64 `json:"ops_per_s"`
	}
	aux.plain = (*plain)(r)
	if err := json.Unmarshal(data, &aux); err != nil {
		return err
	}
	f := func(p *float64) float64 {
		if p == nil {
			return math.NaN()
		}
		return *p
	}
	r.RatioP50, r.RatioOps = aux.RatioP50, aux.RatioOps
	r.MinMs, r.P50Ms, r.P90Ms, r.P99Ms, r.MaxMs = f(aux.MinMs), f(aux.P50Ms), f(aux.P90Ms), f(aux.P99Ms), f(aux.MaxMs)
	r.MeanMs, r.WallMs, r.OpsPerSec = f(aux.MeanMs), f(aux.WallMs), f(aux.OpsPerSec)
	if math.IsNaN(r.OpsPerSec) {
		r.OpsPerSec = 0
	}
	return nil
}

// render redraws the chart of an earlier run from its results.json.
func render(jsonPath, outDir string) error {
	data, err := os.ReadFile(jsonPath)
	if err != nil {
		return err
	}
	var res results
	if err := json.Unmarshal(data, &res); err != nil {
		return fmt.Errorf("%s: %w", jsonPath, err)
	}
	svg := renderSVG(&res)
	if err := checkXML(svg); err != nil {
		return fmt.Errorf("latency.svg is not well-formed XML: %w", err)
	}
	out := filepath.Join(outDir, "latency.svg")
	if err := os.WriteFile(out, svg, 0o644); err != nil {
		return err
	}
	fmt.Println(out)
	return nil
}

func (b *bench) results() *results {
	o := b.o
	res := &results{
		Machine: getMachine(context.Background(), b.env),
		Options: map[string]any{
			"n": o.n, "concurrency": o.conc, "size_bytes": o.size, "node_n": o.nodeN, "scale_n": o.scaleN,
			"parts": partsList(o), "quick": o.quick, "publish_concurrency": []int{1, 8},
			"warmup": "3 untimed CreateVolume+DeleteVolume and 3 untimed clone+remove before the create/delete part",
		},
		Started:         o.started,
		Interrupted:     b.interrupted(),
		DurationS:       math.Round(time.Since(o.started).Seconds()*10) / 10,
		Rows:            b.rows,
		SetupFailures:   b.failures,
		CleanupProblems: b.cleanup,
		Files: map[string]string{
			"driver_log": filepath.Join(o.out, "driver.log"),
			"setup_log":  filepath.Join(o.out, "setup.log"),
			"svg":        filepath.Join(o.out, "latency.svg"),
		},
	}
	m := b.memory
	peak := max(m.IdleHWMKiB, m.ScaleHWMKiB, m.FinalHWMKiB)
	res.Memory = memoryOut{memoryFigures: m, IdleRSSMiB: round1(kibToMiB(m.IdleRSSKiB)), ScaleRSSMiB: round1(kibToMiB(m.ScaleRSSKiB)),
		FinalRSSMiB: round1(kibToMiB(m.FinalRSSKiB)), PeakRSSMiB: round1(kibToMiB(peak))}
	res.Targets = b.targets()
	res.Interference = b.others.snapshot()
	return res
}

func scaleN(n int) string {
	if n == 0 {
		return "scale-n"
	}
	return strconv.Itoa(n)
}

func round1(v float64) float64 { return math.Round(v*10) / 10 }

func partsList(o *options) []string {
	var out []string
	for _, p := range allParts {
		if o.has(p) {
			out = append(out, p)
		}
	}
	return out
}

func (b *bench) find(op, impl string, c int) *row {
	for _, r := range b.rows {
		if r.Operation == op && r.Impl == impl && r.Concurrency == c {
			return r
		}
	}
	return nil
}

func boolp(v bool) *bool { return &v }

func (b *bench) targets() []target {
	ts := []target{
		b.p50Target("CreateVolume p50, concurrency 1", "<= 1.5x raw librbd", "CreateVolume", 1.5),
		b.opsTarget("CreateVolume throughput, concurrency 8", ">= 0.8x raw librbd", "CreateVolume", 0.8),
	}
	t := target{Name: "errors", Goal: "0 at every concurrency (Basalt rows)"}
	if len(b.rows) > 0 {
		n, where := 0, []string{}
		for _, r := range b.rows {
			if r.Impl == implBasalt && r.Errors > 0 {
				n += r.Errors
				where = append(where, fmt.Sprintf("%s c=%d: %d", r.Operation, r.Concurrency, r.Errors))
			}
		}
		t.Value = fmt.Sprintf("%d", n)
		if n > 0 {
			t.Value += " (" + strings.Join(where, "; ") + ")"
		}
		t.Met = boolp(n == 0)
	}
	ts = append(ts, t)
	ts = append(ts,
		b.p50Target("CreateSnapshot p50", "<= 1.5x raw rbd_snap_create", "CreateSnapshot", 1.5),
		b.p50Target("Restore p50, concurrency 1", "<= 1.3x raw clone + resize", "Restore snapshot", 1.3),
		b.opsTarget("Restore throughput, concurrency 8", ">= 0.8x raw clone + resize", "Restore snapshot", 0.8),
		b.p50Target("NodeStage+NodePublish p50", "<= 1.15x shell baseline", "NodeStage+NodePublish", 1.15),
		b.p50Target("NodeUnpublish+NodeUnstage p50", "<= 1.5x shell baseline", "NodeUnpublish+NodeUnstage", 1.5),
	)
	// bench-k8s: the time until the last PVC is Bound, against the control.
	t = target{Name: "Kubernetes: all PVCs Bound", Goal: "<= 1.25x the control driver's time"}
	for _, r := range b.rows {
		if c := b.find(r.Operation, implBaseline, r.Concurrency); r.Operation == "Kubernetes: PVCs Bound" && r.Impl == implBasalt && c != nil && c.WallMs > 0 {
			v := r.WallMs / c.WallMs
			t.Value = fmt.Sprintf("%.3fx (%.1f s vs %.1f s, %d PVCs)", v, r.WallMs/1000, c.WallMs/1000, r.N)
			t.Met = boolp(v <= 1.25)
		}
	}
	ts = append(ts, t)
	t = target{Name: "RSS idle", Goal: "< 60 MiB"}
	if b.memory.IdleRSSKiB > 0 {
		t.Value = fmt.Sprintf("%.1f MiB", kibToMiB(b.memory.IdleRSSKiB))
		t.Met = boolp(kibToMiB(b.memory.IdleRSSKiB) < 60)
	}
	ts = append(ts, t)
	return ts
}

// p50Target: Basalt's p50 at concurrency 1 at most limit times the baseline's.
func (b *bench) p50Target(name, goal, op string, limit float64) target {
	t := target{Name: name, Goal: goal}
	if r := b.find(op, implBasalt, 1); r != nil && r.RatioP50 != nil {
		t.Value = fmt.Sprintf("%.3fx (%s ms vs %s ms)", *r.RatioP50, fmtMs(r.P50Ms), fmtMs(b.find(op, implBaseline, 1).P50Ms))
		t.Met = boolp(*r.RatioP50 <= limit)
	}
	return t
}

// opsTarget: Basalt's throughput at concurrency 8 at least floor times the baseline's.
func (b *bench) opsTarget(name, goal, op string, floor float64) target {
	t := target{Name: name, Goal: goal}
	if r := b.find(op, implBasalt, 8); r != nil && r.RatioOps != nil {
		t.Value = fmt.Sprintf("%.3fx (%.1f vs %.1f ops/s)", *r.RatioOps, r.OpsPerSec, b.find(op, implBaseline, 8).OpsPerSec)
		t.Met = boolp(*r.RatioOps >= floor)
	}
	return t
}

func printTable(w io.Writer, res *results) {
	fmt.Fprintf(w, "\nBasalt benchmark  %s  nproc=%d mem=%d MiB kernel=%s %s  %s  git %s%s\n",
		res.Started.Format("2006-01-02 15:04"), res.Machine.NProc, res.Machine.MemTotalMiB, res.Machine.Kernel,
		shortCeph(res.Machine.Ceph), res.Machine.Go, short(res.Machine.GitCommit), map[bool]string{true: " (dirty)"}[res.Machine.GitDirty])
	if f := res.Interference; len(f.ForeignCeph) > 0 {
		fmt.Fprintf(w, "WARNING: other Ceph daemons ran during %d of %d samples (%s): timings are disturbed\n",
			f.SamplesForeign, f.Samples, strings.Join(f.ForeignCeph, ", "))
	}
	fmt.Fprintf(w, "load average (1 min): %.2f at start, %.2f max during the run\n", res.Interference.LoadAvgStart, res.Interference.LoadAvgMax)
	if res.Interrupted {
		fmt.Fprintf(w, "INTERRUPTED: partial results; operations cut short count as errors\n")
	}
	fmt.Fprintf(w, "latencies in ms; ratios are basalt/baseline (p50: lower is better, ops/s: higher is better)\n\n")
	const hdr = "%-26s %-8s %5s %4s %8s %8s %8s %8s %8s %6s %9s %9s\n"
	fmt.Fprintf(w, hdr, "operation", "impl", "N", "conc", "p50", "p90", "p99", "max", "ops/s", "errors", "p50 ratio", "ops ratio")
	fmt.Fprintln(w, strings.Repeat("-", 26+8+5+4+8*5+6+9+9+11))
	for _, r := range res.Rows {
		rp, ro := "", ""
		if r.Impl == implBasalt {
			rp, ro = "n/a", "n/a"
			if r.RatioP50 != nil {
				rp = fmt.Sprintf("%.2fx", *r.RatioP50)
			} else if r.HasBaseline {
				rp = "-"
			}
			if r.RatioOps != nil {
				ro = fmt.Sprintf("%.2fx", *r.RatioOps)
			} else if r.HasBaseline {
				ro = "-"
			}
		}
		fmt.Fprintf(w, hdr, r.Operation, r.Impl, fmt.Sprint(r.N), fmt.Sprint(r.Concurrency), fmtMs(r.P50Ms), fmtMs(r.P90Ms),
			fmtMs(r.P99Ms), fmtMs(r.MaxMs), fmt.Sprintf("%.1f", r.OpsPerSec), fmt.Sprint(r.Errors), rp, ro)
	}
	var cpu []string
	for _, r := range res.Rows {
		if r.ClientCPUMsPerOp != nil && r.OSDCPUMsPerOp != nil {
			cpu = append(cpu, fmt.Sprintf("  %-26s %-8s c=%-3d %-15s %7.2f   ceph-osd %7.2f", r.Operation, r.Impl, r.Concurrency,
				r.Client, *r.ClientCPUMsPerOp, *r.OSDCPUMsPerOp))
		}
	}
	if len(cpu) > 0 {
		fmt.Fprintln(w, "\nCPU ms per successful operation (client: basalt-csi, or this process running librbd; ceph-osd):")
		fmt.Fprintln(w, strings.Join(cpu, "\n"))
	}
	m := res.Memory
	scale := "not measured"
	if m.ScaleVolumes > 0 {
		scale = fmt.Sprintf("%.1f MiB", m.ScaleRSSMiB)
	}
	fmt.Fprintf(w, "\nbasalt-csi RSS: idle %.1f MiB; with %s volumes %s; at the end %.1f MiB; peak (VmHWM) %.1f MiB\n",
		m.IdleRSSMiB, scaleN(m.ScaleVolumes), scale, m.FinalRSSMiB, m.PeakRSSMiB)
	if m.DriverExited {
		fmt.Fprintln(w, "WARNING: basalt-csi exited during the run (see driver.log)")
	}
	var errs []string
	for _, r := range res.Rows {
		for _, s := range r.ErrorSamples {
			errs = append(errs, fmt.Sprintf("  %s %s c=%d: %s", r.Operation, r.Impl, r.Concurrency, s))
		}
	}
	if len(errs) > 0 {
		fmt.Fprintln(w, "\nerrors:")
		fmt.Fprintln(w, strings.Join(errs, "\n"))
	}
	fmt.Fprintln(w, "\ntargets:")
	for _, t := range res.Targets {
		st := "not measured"
		if t.Met != nil {
			st = map[bool]string{true: "MET", false: "MISSED"}[*t.Met]
		}
		fmt.Fprintf(w, "  %-40s %-37s %-7s %s\n", t.Name, t.Goal, st, t.Value)
	}
	for _, f := range res.SetupFailures {
		fmt.Fprintf(w, "SETUP FAILURE: %s\n", f)
	}
	for _, c := range res.CleanupProblems {
		fmt.Fprintf(w, "clean-up problem: %s\n", c)
	}
	fmt.Fprintf(w, "\nresults: %s  chart: %s  driver log: %s  (%.0f s)\n",
		filepath.Join(filepath.Dir(res.Files["svg"]), "results.json"), res.Files["svg"], res.Files["driver_log"], res.DurationS)
}

func short(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

// shortCeph turns "ceph version 16.2.11 (...) pacific (stable)" into "ceph 16.2.11".
func shortCeph(s string) string {
	f := strings.Fields(s)
	if len(f) >= 3 {
		return "ceph " + f[2]
	}
	return s
}

func writeResults(dir string, res *results) error {
	data, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(data, '\n'), 0o644); err != nil {
		return err
	}
	svg := renderSVG(res)
	if err := checkXML(svg); err != nil {
		return fmt.Errorf("latency.svg is not well-formed XML: %w", err)
	}
	return os.WriteFile(filepath.Join(dir, "latency.svg"), svg, 0o644)
}
