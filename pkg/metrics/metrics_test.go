package metrics

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/basalt-csi/basalt/pkg/scheduler"
)

func TestObserveCSICountsByMethodAndCode(t *testing.T) {
	ok := testutil.ToFloat64(csiRequests.WithLabelValues("CreateVolume", "OK"))
	ex := testutil.ToFloat64(csiRequests.WithLabelValues("CreateVolume", "ResourceExhausted"))
	ObserveCSI("CreateVolume", "OK", 40*time.Millisecond)
	ObserveCSI("CreateVolume", "OK", 3*time.Second)
	ObserveCSI("CreateVolume", "ResourceExhausted", time.Millisecond)
	if got := testutil.ToFloat64(csiRequests.WithLabelValues("CreateVolume", "OK")) - ok; got != 2 {
		t.Errorf("OK creates counted %v times, want 2", got)
	}
	if got := testutil.ToFloat64(csiRequests.WithLabelValues("CreateVolume", "ResourceExhausted")) - ex; got != 1 {
		t.Errorf("refused creates counted %v times, want 1", got)
	}
	h := histogramOf(t, "basalt_csi_request_duration_seconds", "CreateVolume")
	if h.GetSampleCount() < 3 || h.GetSampleSum() < 3.04 {
		t.Errorf("histogram count %d sum %v, want >= 3 and >= 3.04 s", h.GetSampleCount(), h.GetSampleSum())
	}
	// 40 ms lands in the 0.05 bucket, 3 s above the 2.5 one.
	for _, b := range h.GetBucket() {
		if b.GetUpperBound() == 0.025 && b.GetCumulativeCount() >= h.GetSampleCount() {
			t.Errorf("every sample at or under 25 ms: %v", h)
		}
	}
}

func histogramOf(t *testing.T, name, method string) *dto.Histogram {
	t.Helper()
	fams, err := Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "method" && l.GetValue() == method {
					return m.GetHistogram()
				}
			}
		}
	}
	t.Fatalf("no %s{method=%q}", name, method)
	return nil
}

func TestRefusedCountsEachFilter(t *testing.T) {
	r0 := testutil.ToFloat64(refusals)
	c0 := testutil.ToFloat64(rejections.WithLabelValues(scheduler.FilterCapacity))
	z0 := testutil.ToFloat64(rejections.WithLabelValues(scheduler.FilterZone))
	err := &scheduler.NoCandidateError{Rejections: []scheduler.Rejection{
		{Backend: "a", Filter: scheduler.FilterCapacity}, {Backend: "b", Filter: scheduler.FilterCapacity}, {Backend: "c", Filter: scheduler.FilterZone},
	}}
	Refused(err.Filters())
	if d := testutil.ToFloat64(refusals) - r0; d != 1 {
		t.Errorf("refusals +%v, want +1", d)
	}
	if d := testutil.ToFloat64(rejections.WithLabelValues(scheduler.FilterCapacity)) - c0; d != 2 {
		t.Errorf("capacity rejections +%v, want +2", d)
	}
	if d := testutil.ToFloat64(rejections.WithLabelValues(scheduler.FilterZone)) - z0; d != 1 {
		t.Errorf("zone rejections +%v, want +1", d)
	}
}

func TestBackendCollectorReportsTheSchedulersView(t *testing.T) {
	const gib = 1 << 30
	c := backendCollector{func() []scheduler.Backend {
		return []scheduler.Backend{
			{Name: "a", Zone: "z1", Up: true, TotalBytes: 100 * gib, FreeBytes: 80 * gib, ProvisionedBytes: 50 * gib,
				ReservedPercentage: 10, MaxOverSubscriptionRatio: 2},
			{Name: "b", Zone: "z2", Up: false},
		}
	}}
	want := `
# HELP basalt_backend_up 1 if the backend's Ceph cluster answers (the scheduler places on it), 0 if it is down.
# TYPE basalt_backend_up gauge
basalt_backend_up{backend="a",zone="z1"} 1
basalt_backend_up{backend="b",zone="z2"} 0
# HELP basalt_backend_virtual_free_bytes What the scheduler still places on the backend: capacity x maxOverSubscriptionRatio - provisioned - reserved.
# TYPE basalt_backend_virtual_free_bytes gauge
basalt_backend_virtual_free_bytes{backend="a"} 1.50323855360e+11
basalt_backend_virtual_free_bytes{backend="b"} 0
# HELP basalt_backend_oversubscription_ratio Provisioned bytes / physical capacity: how far the backend is over-subscribed now.
# TYPE basalt_backend_oversubscription_ratio gauge
basalt_backend_oversubscription_ratio{backend="a"} 0.5
basalt_backend_oversubscription_ratio{backend="b"} 0
`
	// 100 GiB x 2 - 50 GiB - 10 GiB reserved = 140 GiB.
	if err := testutil.CollectAndCompare(c, strings.NewReader(want),
		"basalt_backend_up", "basalt_backend_virtual_free_bytes", "basalt_backend_oversubscription_ratio"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(c); n != 14 {
		t.Errorf("%d samples for 2 backends, want 7 each", n)
	}
}

// TestLabelsAreBounded: Basalt's metrics carry only labels whose values are
// bounded by the configuration or the specifications.
func TestLabelsAreBounded(t *testing.T) {
	ObserveCSI("Probe", "OK", time.Microsecond)
	Placed("a")
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(backendCollector{func() []scheduler.Backend { return []scheduler.Backend{{Name: "a", Zone: "z"}} }}); err != nil {
		t.Fatal(err)
	}
	reg.MustRegister(&censusCollector{now: time.Now, read: func(context.Context) (Census, error) {
		return Census{Nodes: []NodeCensus{{ID: "n", Zone: "z"}}}, nil
	}}, stagedCollector{"fuse", func() (int, error) { return 0, nil }})
	ObserveCeph("reading", time.Millisecond, false, false)
	ObserveCommand("rbd", time.Millisecond, false, false)
	Healed(HealAlive)
	Recovered(RecoveryUndoCreate)
	Flattened(time.Second, nil)
	// Node IDs are bounded by the cluster's size, like backends by the
	// configuration; volume IDs and names never appear.
	allowed := map[string]bool{"method": true, "code": true, "backend": true, "zone": true, "filter": true,
		"op": true, "command": true, "outcome": true, "action": true, "kind": true, "node": true, "mapper": true,
		"reason": true} // reason: stale, count or size (image-cache evictions)
	for _, g := range []prometheus.Gatherer{Registry, reg} {
		fams, err := g.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fams {
			if !strings.HasPrefix(f.GetName(), "basalt_") {
				continue
			}
			for _, m := range f.GetMetric() {
				for _, l := range m.GetLabel() {
					if !allowed[l.GetName()] {
						t.Errorf("%s has label %q", f.GetName(), l.GetName())
					}
				}
			}
		}
	}
}
