package metrics

import (
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The node plugin's work: the commands it runs (rbd, rbd-fuse, losetup,
// mount, mkfs, ...), the volumes it holds staged, and what its healing did.
var (
	commandDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "basalt_node_command_duration_seconds",
		Help:    "Time of an external command the node plugin ran (rbd, rbd-fuse, losetup, mount, umount, mkfs, blkid, ...), by command, until it ended or was killed at its deadline.",
		Buckets: latencyBuckets,
	}, []string{"command"})
	commandFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "basalt_node_command_failures_total",
		Help: "External commands that failed or were killed at their deadline, by command (a failure may be expected: blkid on a blank device).",
	}, []string{"command"})
	commandTimeouts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "basalt_node_command_timeouts_total",
		Help: "External commands killed at their deadline, by command.",
	}, []string{"command"})
	healActions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "basalt_node_heal_actions_total",
		Help: "What the node plugin did with a staged volume it checked at start (alive: nothing to do; torn_down: no longer wanted) or found broken then or at a repeated NodeStage (healed: mapped and mounted again in place; failed).",
	}, []string{"outcome"})
	stagedDesc = prometheus.NewDesc("basalt_node_staged_volumes",
		"Volumes this node plugin holds staged (mapped, with a staging record), by mapper.", []string{"mapper"}, nil)
)

func init() {
	Registry.MustRegister(commandDuration, commandFailures, commandTimeouts, healActions)
	for _, o := range []string{HealAlive, HealHealed, HealTornDown, HealFailed} {
		healActions.WithLabelValues(o)
	}
}

// ObserveCommand records one external command run by the node plugin: its
// name (a path is reduced to its base name), how long it ran, whether it
// failed and whether it was killed at its deadline.
func ObserveCommand(name string, took time.Duration, failed, timedOut bool) {
	name = filepath.Base(name)
	commandDuration.WithLabelValues(name).Observe(took.Seconds())
	// Failures and timeouts of every command seen, at 0 until one comes.
	commandFailures.WithLabelValues(name).Add(b2f(failed || timedOut))
	commandTimeouts.WithLabelValues(name).Add(b2f(timedOut))
}

// Heal outcomes (basalt_node_heal_actions_total).
const (
	HealAlive    = "alive"
	HealHealed   = "healed"
	HealTornDown = "torn_down"
	HealFailed   = "failed"
)

// Healed records what a heal check of one staged volume ended with.
func Healed(outcome string) { healActions.WithLabelValues(outcome).Inc() }

type stagedCollector struct {
	mapper string
	count  func() (int, error)
}

// RegisterStaged exposes how many volumes the node holds staged through
// mapper, counted at each scrape (a local directory listing, no Ceph call).
func RegisterStaged(mapper string, count func() (int, error)) {
	Registry.MustRegister(stagedCollector{mapper, count})
}

func (stagedCollector) Describe(ch chan<- *prometheus.Desc) { ch <- stagedDesc }

func (c stagedCollector) Collect(ch chan<- prometheus.Metric) {
	n, err := c.count()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(stagedDesc, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(stagedDesc, prometheus.GaugeValue, float64(n), c.mapper)
}
