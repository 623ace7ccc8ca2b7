package main

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/status"
)

const (
	implBasalt   = "basalt"
	implBaseline = "baseline"
)

// row is one line of the table: one operation, implementation and
// concurrency. Latencies are of successful calls, in milliseconds.
type row struct {
	Operation    string   `json:"operation"`
	Impl         string   `json:"implementation"`
	N            int      `json:"n"`
	Concurrency  int      `json:"concurrency"`
	OK           int      `json:"ok"`
	Errors       int      `json:"errors"`
	ErrorSamples []string `json:"error_samples,omitempty"`
	MinMs        float64  `json:"min_ms"`
	P50Ms        float64  `json:"p50_ms"`
	P90Ms        float64  `json:"p90_ms"`
	P99Ms        float64  `json:"p99_ms"`
	MaxMs        float64  `json:"max_ms"`
	MeanMs       float64  `json:"mean_ms"`
	WallMs       float64  `json:"wall_ms"`
	OpsPerSec    float64  `json:"ops_per_s"`
	RatioP50     *float64 `json:"ratio_p50,omitempty"`        // basalt p50 / baseline p50 (lower is better)
	RatioOps     *float64 `json:"ratio_throughput,omitempty"` // basalt ops/s / baseline ops/s (higher is better)
	HasBaseline  bool     `json:"has_baseline"`
	Note         string   `json:"note,omitempty"`
	// CPU per successful operation: of the client (basalt-csi for Basalt
	// rows, this bench process running librbd for baseline rows) and of
	// ceph-osd, from /proc/<pid>/stat around the batch.
	Client           string    `json:"client_process,omitempty"`
	ClientCPUMsPerOp *float64  `json:"client_cpu_ms_per_op,omitempty"`
	OSDCPUMsPerOp    *float64  `json:"osd_cpu_ms_per_op,omitempty"`
	LatenciesMs      []float64 `json:"latencies_ms"`
	order            int
}

var rowCounter int

// batch is the outcome of running one operation n times.
type batch struct {
	lat    []time.Duration
	errs   int
	msgs   map[string]int
	wall   time.Duration
	n      int
	conc   int
	mu     sync.Mutex
	failed []int // indices of failed operations
	// CPU used during the batch (ms), when measured.
	hasCPU            bool
	client            string
	clientCPU, osdCPU float64
}

// withCPU runs a batch and records the CPU time the client and the OSD used.
func (b *bench) withCPU(impl string, f func() *batch) *batch {
	c0 := b.env.cpu()
	bt := f()
	c1 := b.env.cpu()
	bt.hasCPU = true
	bt.osdCPU = c1.osd - c0.osd
	if impl == implBasalt {
		bt.client, bt.clientCPU = "basalt-csi", c1.driver-c0.driver
	} else {
		bt.client, bt.clientCPU = "bench (librbd)", c1.self-c0.self
	}
	return bt
}

func (b *batch) fail(i int, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.errs++
	b.failed = append(b.failed, i)
	msg := err.Error()
	if st, ok := status.FromError(err); ok {
		msg = st.Code().String() + ": " + st.Message()
	}
	if len(msg) > 300 {
		msg = msg[:300] + "..."
	}
	if b.msgs == nil {
		b.msgs = map[string]int{}
	}
	b.msgs[msg]++
}

// opTimeout bounds one timed operation (a gRPC call or a command sequence).
const opTimeout = 3 * time.Minute

// runBatch runs op(i) for i in [0,n) on conc workers and times each call and
// the whole batch.
func runBatch(ctx context.Context, n, conc int, op func(ctx context.Context, i int) error) *batch {
	b := &batch{n: n, conc: conc, lat: make([]time.Duration, 0, n)}
	if conc < 1 {
		conc = 1
	}
	idx := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < min(conc, n); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range idx {
				if ctx.Err() != nil {
					b.fail(i, ctx.Err())
					continue
				}
				octx, cancel := context.WithTimeout(ctx, opTimeout)
				t0 := time.Now()
				err := op(octx, i)
				d := time.Since(t0)
				cancel()
				if err != nil {
					b.fail(i, err)
					continue
				}
				b.mu.Lock()
				b.lat = append(b.lat, d)
				b.mu.Unlock()
			}
		}()
	}
	for i := 0; i < n; i++ {
		idx <- i
	}
	close(idx)
	wg.Wait()
	b.wall = time.Since(start)
	return b
}

// runOne runs one untimed step with opTimeout.
func runOne(ctx context.Context, f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	return f(ctx)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// percentile by nearest rank on sorted values.
func percentile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	k := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(k, len(sorted)-1))]
}

func (b *bench) addRow(op, impl string, hasBaseline bool, bt *batch, note string) *row {
	rowCounter++
	r := &row{Operation: op, Impl: impl, N: bt.n, Concurrency: bt.conc, OK: len(bt.lat), Errors: bt.errs,
		WallMs: ms(bt.wall), HasBaseline: hasBaseline, Note: note, order: rowCounter}
	vals := make([]float64, len(bt.lat))
	var sum float64
	for i, d := range bt.lat {
		vals[i] = math.Round(ms(d)*1000) / 1000
		sum += vals[i]
	}
	r.LatenciesMs = append([]float64(nil), vals...)
	sort.Float64s(vals)
	nan := math.NaN()
	r.MinMs, r.P50Ms, r.P90Ms, r.P99Ms, r.MaxMs, r.MeanMs = nan, nan, nan, nan, nan, nan
	if len(vals) > 0 {
		r.MinMs, r.MaxMs = vals[0], vals[len(vals)-1]
		r.P50Ms, r.P90Ms, r.P99Ms = percentile(vals, 0.50), percentile(vals, 0.90), percentile(vals, 0.99)
		r.MeanMs = sum / float64(len(vals))
	}
	if bt.hasCPU && len(bt.lat) > 0 {
		c, o := bt.clientCPU/float64(len(bt.lat)), bt.osdCPU/float64(len(bt.lat))
		r.Client, r.ClientCPUMsPerOp, r.OSDCPUMsPerOp = bt.client, &c, &o
	}
	if bt.wall > 0 {
		r.OpsPerSec = float64(len(bt.lat)) / bt.wall.Seconds()
	}
	type kv struct {
		m string
		n int
	}
	var msgs []kv
	for m, n := range bt.msgs {
		msgs = append(msgs, kv{m, n})
	}
	sort.Slice(msgs, func(i, j int) bool { return msgs[i].n > msgs[j].n || (msgs[i].n == msgs[j].n && msgs[i].m < msgs[j].m) })
	for i, m := range msgs {
		if i == 5 {
			r.ErrorSamples = append(r.ErrorSamples, fmt.Sprintf("... and %d other messages", len(msgs)-5))
			break
		}
		r.ErrorSamples = append(r.ErrorSamples, fmt.Sprintf("%dx %s", m.n, m.m))
	}
	b.mu.Lock()
	b.rows = append(b.rows, r)
	b.mu.Unlock()
	logf("  %-28s %-8s n=%-4d c=%-3d p50=%s p99=%s ops/s=%.1f errors=%d", op, impl, r.N, r.Concurrency,
		fmtMs(r.P50Ms), fmtMs(r.P99Ms), r.OpsPerSec, r.Errors)
	for _, s := range r.ErrorSamples {
		logf("    error: %s", s)
	}
	return r
}

// computeRatios fills the ratio columns of Basalt rows that have a baseline
// row with the same operation and concurrency.
func computeRatios(rows []*row) {
	for _, r := range rows {
		if r.Impl != implBasalt || !r.HasBaseline {
			continue
		}
		for _, b := range rows {
			if b.Impl == implBaseline && b.Operation == r.Operation && b.Concurrency == r.Concurrency {
				if b.P50Ms > 0 && !math.IsNaN(r.P50Ms) {
					v := r.P50Ms / b.P50Ms
					r.RatioP50 = &v
				}
				if b.OpsPerSec > 0 {
					v := r.OpsPerSec / b.OpsPerSec
					r.RatioOps = &v
				}
			}
		}
	}
}

func fmtMs(v float64) string {
	switch {
	case math.IsNaN(v):
		return "-"
	case v < 10:
		return fmt.Sprintf("%.2f", v)
	case v < 1000:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.0f", v)
}

func kibToMiB(k int64) float64 { return float64(k) / 1024 }

func goVersion() string { return runtime.Version() }

// nameOf builds unique request/image names for this run.
func (b *bench) nameOf(parts ...any) string {
	s := make([]string, 0, len(parts)+2)
	s = append(s, "bench", b.o.runID)
	for _, p := range parts {
		s = append(s, fmt.Sprint(p))
	}
	return strings.Join(s, "-")
}
