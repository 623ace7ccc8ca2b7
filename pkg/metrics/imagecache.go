package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Image-cache lookups, by outcome (README, "Image-volume cache").
const (
	CacheHit  = "hit"  // cloned from a ready entry
	CacheMiss = "miss" // an entry was filled (or waited for) first
	CacheOff  = "off"  // no entry and the backend's cache is off: copied
)

var (
	cacheLookups = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "basalt_image_cache_lookups_total",
		Help: "Creates from a golden image held in another cluster, by backend and outcome: hit (cloned from a cache entry), miss (an entry was filled first, or waited for), off (no entry and the backend's cache is off: a full copy).",
	}, []string{"backend", "outcome"})
	cacheFills = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "basalt_image_cache_fills_total",
		Help: "Image-cache entries filled (a golden image copied into a cluster), by backend and outcome: done or failed.",
	}, []string{"backend", "outcome"})
	cacheFillDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "basalt_image_cache_fill_duration_seconds",
		Help:    "Time to fill an image-cache entry (copying the golden image), successful or not.",
		Buckets: latencyBuckets,
	})
	cacheEvictions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "basalt_image_cache_evictions_total",
		Help: "Image-cache entries evicted, by backend and reason: stale (the golden snapshot was replaced), count or size (over the backend's maxCount or maxSizeGiB).",
	}, []string{"backend", "reason"})
)

func init() {
	Registry.MustRegister(cacheLookups, cacheFills, cacheFillDuration, cacheEvictions)
}

// CacheLookup records one create's use of the image cache.
func CacheLookup(backend, outcome string) { cacheLookups.WithLabelValues(backend, outcome).Inc() }

// CacheFilled records one fill.
func CacheFilled(backend string, took time.Duration, err error) {
	cacheFillDuration.Observe(took.Seconds())
	outcome := "done"
	if err != nil {
		outcome = "failed"
	}
	cacheFills.WithLabelValues(backend, outcome).Inc()
}

// CacheEvicted records one eviction.
func CacheEvicted(backend, reason string) { cacheEvictions.WithLabelValues(backend, reason).Inc() }
