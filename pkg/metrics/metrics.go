// Package metrics is Basalt's Prometheus instrumentation: what an operator
// needs to see without reading logs (README, "Monitoring"). The collectors
// live in one registry, served by Serve on --metrics-address. Every label is
// bounded by the configuration or by the CSI and gRPC specifications (a CSI
// method, a gRPC code, a backend or zone name, a scheduler filter), never a
// volume or snapshot ID or name: a label per volume would grow without bound
// and make every scrape as large as the cluster.
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/basalt-csi/basalt/pkg/scheduler"
)

// Registry holds every Basalt metric plus the Go runtime's and the
// process's. Updates are cheap and always made; they are exposed only when
// a metrics address is set.
var Registry = prometheus.NewRegistry()

// latencyBuckets span what Basalt's calls measure (README, "Performance"):
// Probe and GetCapacity well under a millisecond, publishes around 10 ms,
// creates and deletes 40 ms to a second under load, stages about 250 ms,
// flattens and cross-cluster copies up to minutes.
var latencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}

var (
	csiRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "basalt_csi_requests_total",
		Help: "CSI calls served, by method and gRPC status code.",
	}, []string{"method", "code"})
	csiDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "basalt_csi_request_duration_seconds",
		Help:    "Time to answer a CSI call, by method (every outcome).",
		Buckets: latencyBuckets,
	}, []string{"method"})
	placements = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "basalt_scheduler_placements_total",
		Help: "Volumes the scheduler placed, by backend (reschedules count again).",
	}, []string{"backend"})
	rejections = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "basalt_scheduler_rejections_total",
		Help: "Backends a refused placement ruled out, by the filter that ruled each out (up, backend, zone, capabilities, capacity, image).",
	}, []string{"filter"})
	refusals = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "basalt_scheduler_refusals_total",
		Help: "Placements refused because no backend passed every filter.",
	})
	reschedules = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "basalt_scheduler_reschedules_total",
		Help: "Creates that failed on a backend and were placed again on another.",
	})
	cephDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "basalt_ceph_call_duration_seconds",
		Help:    "Time of a librados/librbd call, by operation (the verb of its description), until it returned or its deadline passed.",
		Buckets: latencyBuckets,
	}, []string{"op"})
	cephFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "basalt_ceph_call_failures_total",
		Help: "librados/librbd calls that returned an error or were abandoned, by operation.",
	}, []string{"op"})
	cephTimeouts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "basalt_ceph_call_timeouts_total",
		Help: "librados/librbd calls abandoned at their deadline (cephTimeoutSeconds), by operation; they may still finish in the background.",
	}, []string{"op"})
)

func init() {
	Registry.MustRegister(csiRequests, csiDuration, placements, rejections, refusals, reschedules,
		cephDuration, cephFailures, cephTimeouts,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Series whose labels are known in advance start at 0, so that a
	// scrape shows them (and rate() works) before the first event.
	for _, f := range []string{scheduler.FilterUp, scheduler.FilterBackend, scheduler.FilterZone,
		scheduler.FilterCapabilities, scheduler.FilterCapacity, scheduler.FilterImage} {
		rejections.WithLabelValues(f)
	}
}

// ObserveCSI records one CSI call: its method (e.g. "CreateVolume"), the
// gRPC code it ended with (e.g. "OK", "ResourceExhausted") and how long it
// took.
func ObserveCSI(method, code string, took time.Duration) {
	csiRequests.WithLabelValues(method, code).Inc()
	csiDuration.WithLabelValues(method).Observe(took.Seconds())
}

// Placed records a placement on backend.
func Placed(backend string) { placements.WithLabelValues(backend).Inc() }

// Refused records a placement no backend could take, with the filter that
// ruled out each backend.
func Refused(filters []string) {
	refusals.Inc()
	for _, f := range filters {
		rejections.WithLabelValues(f).Inc()
	}
}

// Rescheduled records a create moving on to another backend after a failure.
func Rescheduled() { reschedules.Inc() }

// ObserveCeph records one Ceph call: its operation, how long it took (or
// ran before it was abandoned), whether it failed, and whether it was
// abandoned at its deadline.
func ObserveCeph(op string, took time.Duration, failed, timedOut bool) {
	cephDuration.WithLabelValues(op).Observe(took.Seconds())
	// Failures and timeouts of every operation seen, at 0 until one comes.
	cephFailures.WithLabelValues(op).Add(b2f(failed))
	cephTimeouts.WithLabelValues(op).Add(b2f(timedOut))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
