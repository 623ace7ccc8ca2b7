package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/basalt-csi/basalt/pkg/scheduler"
)

// The backends as the scheduler sees them, read at scrape time (a gauge set
// on every refresh would go stale between refreshes, and the scheduler
// charges placements in between).
var (
	backendUp = prometheus.NewDesc("basalt_backend_up",
		"1 if the backend's Ceph cluster answers (the scheduler places on it), 0 if it is down.", []string{"backend", "zone"}, nil)
	backendCapacity = prometheus.NewDesc("basalt_backend_capacity_bytes",
		"Physical capacity of the backend's pool, at the last refresh.", []string{"backend"}, nil)
	backendFree = prometheus.NewDesc("basalt_backend_free_bytes",
		"Physical free space of the backend's pool (max_avail), at the last refresh.", []string{"backend"}, nil)
	backendProvisioned = prometheus.NewDesc("basalt_backend_provisioned_bytes",
		"Sum of the sizes of the volumes on the backend, placements in flight included (thin: what has been promised).", []string{"backend"}, nil)
	backendVirtualFree = prometheus.NewDesc("basalt_backend_virtual_free_bytes",
		"What the scheduler still places on the backend: capacity x maxOverSubscriptionRatio - provisioned - reserved.", []string{"backend"}, nil)
	backendOverSubscription = prometheus.NewDesc("basalt_backend_oversubscription_ratio",
		"Provisioned bytes / physical capacity: how far the backend is over-subscribed now.", []string{"backend"}, nil)
	backendMaxOverSubscription = prometheus.NewDesc("basalt_backend_max_oversubscription_ratio",
		"The backend's configured maxOverSubscriptionRatio (1 when unset).", []string{"backend"}, nil)
)

type backendCollector struct{ snapshot func() []scheduler.Backend }

// RegisterBackends exposes the scheduler's view of every backend, read from
// snapshot at each scrape.
func RegisterBackends(snapshot func() []scheduler.Backend) {
	Registry.MustRegister(backendCollector{snapshot})
}

func (backendCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{backendUp, backendCapacity, backendFree, backendProvisioned,
		backendVirtualFree, backendOverSubscription, backendMaxOverSubscription} {
		ch <- d
	}
}

func (c backendCollector) Collect(ch chan<- prometheus.Metric) {
	for _, b := range c.snapshot() {
		up := 0.0
		if b.Up {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(backendUp, prometheus.GaugeValue, up, b.Name, b.Zone)
		ch <- prometheus.MustNewConstMetric(backendCapacity, prometheus.GaugeValue, float64(b.TotalBytes), b.Name)
		ch <- prometheus.MustNewConstMetric(backendFree, prometheus.GaugeValue, float64(b.FreeBytes), b.Name)
		ch <- prometheus.MustNewConstMetric(backendProvisioned, prometheus.GaugeValue, float64(b.ProvisionedBytes), b.Name)
		ch <- prometheus.MustNewConstMetric(backendVirtualFree, prometheus.GaugeValue, float64(b.VirtualFreeBytes()), b.Name)
		ratio := 0.0
		if b.TotalBytes > 0 {
			ratio = float64(b.ProvisionedBytes) / float64(b.TotalBytes)
		}
		ch <- prometheus.MustNewConstMetric(backendOverSubscription, prometheus.GaugeValue, ratio, b.Name)
		ch <- prometheus.MustNewConstMetric(backendMaxOverSubscription, prometheus.GaugeValue, b.MaxOverSubscription(), b.Name)
	}
}
