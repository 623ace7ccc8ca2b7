package metrics

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Census is what the controller's registry says that an operator watches:
// the nodes and their attachments, the creates still pending, and the
// deferred work. The controller reads it from Ceph at each scrape (a few
// omap reads), so the figures are as fresh as the scrape.
type Census struct {
	Nodes []NodeCensus
	// Pending creates by kind ("volume", "snapshot", "group").
	Pending map[string]PendingCensus
	// FlattenQueue is the number of volumes waiting to be flattened.
	FlattenQueue int
	// DeletedKept is the number of deleted volumes whose images snapshots
	// or clones still need (removed by the sweep once nothing does).
	DeletedKept int
}

// NodeCensus is one registered node plugin.
type NodeCensus struct {
	ID, Zone    string
	LastSeen    time.Time // its last heartbeat
	Attachments int       // volumes published to it
}

// PendingCensus is the creates of one kind that have not finished.
type PendingCensus struct {
	Count  int
	Oldest time.Time // last update of the oldest; zero when Count is 0
}

// Recovery actions (basalt_recovery_actions_total): what the controller did
// to settle work a crash or an outage interrupted.
const (
	RecoveryUndoCreate = "undo_create" // an interrupted create undone
	RecoverySettleMove = "settle_move" // an interrupted retype finished or undone
)

var (
	censusNodeSeen = prometheus.NewDesc("basalt_node_last_seen_age_seconds",
		"Seconds since the node plugin's last heartbeat (every 30 s while it runs).", []string{"node", "zone"}, nil)
	censusAttachments = prometheus.NewDesc("basalt_node_attachments",
		"Volumes published to the node (ControllerPublish), from the node attachment index.", []string{"node"}, nil)
	censusPending = prometheus.NewDesc("basalt_records_pending",
		"Creates reserved but not finished, by kind (volume, snapshot, group): in flight, or interrupted and waiting for recovery.", []string{"kind"}, nil)
	censusPendingAge = prometheus.NewDesc("basalt_records_pending_oldest_age_seconds",
		"Seconds since the oldest unfinished create of the kind last moved (0 when none): a create stuck past the recovery grace period shows here.", []string{"kind"}, nil)
	censusFlatten = prometheus.NewDesc("basalt_flatten_queue_length",
		"Volumes whose clone chain is too deep, waiting for the background flattener.", nil, nil)
	censusDeleted = prometheus.NewDesc("basalt_deleted_volumes_kept",
		"Deleted volumes whose images are kept because snapshots or clones still need them.", nil, nil)
	censusAge = prometheus.NewDesc("basalt_records_read_age_seconds",
		"Age of the registry figures above: 0 when this scrape read them, more when the read failed and older figures are shown.", nil, nil)
	censusFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "basalt_records_read_failures_total",
		Help: "Scrapes at which the controller could not read the registry (its backend down or slow).",
	})
	recoveryActions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "basalt_recovery_actions_total",
		Help: "Work the controller settled after a crash or an outage, by action: undo_create (an interrupted create undone), settle_move (an interrupted retype finished or undone).",
	}, []string{"action"})
	flattenDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "basalt_flatten_duration_seconds",
		Help:    "Time of a background flatten (copying a clone's data from its parents), successful or not.",
		Buckets: latencyBuckets,
	})
	flattens = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "basalt_flattens_total",
		Help: "Background flattens, by outcome: done or failed (a failed one is retried).",
	}, []string{"outcome"})
)

func init() {
	Registry.MustRegister(censusFailures, recoveryActions, flattenDuration, flattens)
	for _, a := range []string{RecoveryUndoCreate, RecoverySettleMove} {
		recoveryActions.WithLabelValues(a)
	}
	for _, o := range []string{"done", "failed"} {
		flattens.WithLabelValues(o)
	}
}

// Recovered records one recovery action.
func Recovered(action string) { recoveryActions.WithLabelValues(action).Inc() }

// Flattened records one background flatten.
func Flattened(took time.Duration, err error) {
	flattenDuration.Observe(took.Seconds())
	outcome := "done"
	if err != nil {
		outcome = "failed"
	}
	flattens.WithLabelValues(outcome).Inc()
}

// censusTimeout bounds the registry read of one scrape (Serve allows a
// scrape 30 s; Prometheus' default scrape timeout is 10 s).
const censusTimeout = 8 * time.Second

type censusCollector struct {
	read func(context.Context) (Census, error)
	now  func() time.Time

	mu   sync.Mutex // one read at a time; concurrent scrapes wait for it
	last Census
	at   time.Time // when last was read; zero before the first success
}

// RegisterCensus exposes the registry's census, read with read at each
// scrape. When a read fails the previous figures are shown, with their age.
func RegisterCensus(read func(context.Context) (Census, error)) {
	Registry.MustRegister(&censusCollector{read: read, now: time.Now})
}

func (*censusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{censusNodeSeen, censusAttachments, censusPending,
		censusPendingAge, censusFlatten, censusDeleted, censusAge} {
		ch <- d
	}
}

func (c *censusCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), censusTimeout)
	defer cancel()
	now := c.now()
	if cs, err := c.read(ctx); err == nil {
		c.last, c.at = cs, now
	} else {
		censusFailures.Inc()
		if c.at.IsZero() {
			ch <- prometheus.NewInvalidMetric(censusAge, err)
			return
		}
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	age := func(t time.Time) float64 { return max(0, now.Sub(t).Seconds()) }
	gauge(censusAge, age(c.at))
	for _, n := range c.last.Nodes {
		gauge(censusNodeSeen, age(n.LastSeen), n.ID, n.Zone)
		gauge(censusAttachments, float64(n.Attachments), n.ID)
	}
	for _, kind := range []string{"volume", "snapshot", "group"} {
		p := c.last.Pending[kind]
		gauge(censusPending, float64(p.Count), kind)
		oldest := 0.0
		if p.Count > 0 {
			oldest = age(p.Oldest)
		}
		gauge(censusPendingAge, oldest, kind)
	}
	gauge(censusFlatten, float64(c.last.FlattenQueue))
	gauge(censusDeleted, float64(c.last.DeletedKept))
}
