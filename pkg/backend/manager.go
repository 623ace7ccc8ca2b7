package backend

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/basalt-csi/basalt/pkg/config"
	"github.com/basalt-csi/basalt/pkg/records"
	"github.com/basalt-csi/basalt/pkg/scheduler"
)

// Connector opens a backend. It must honour ctx.
type Connector func(ctx context.Context, b config.Backend) (Cluster, error)

// ProvisionedFunc reports the provisioned bytes per backend name.
type ProvisionedFunc func(ctx context.Context) (map[string]uint64, error)

// Manager owns every configured backend.
type Manager struct {
	cfg     *config.Config
	connect Connector
	log     *slog.Logger
	sched   *scheduler.State
	timeout time.Duration

	// Provisioned is consulted on every refresh so the scheduler's
	// thin-provisioning figures are authoritative, not only local estimates.
	// NewManager sets it to sum Basalt's volume index; tests may replace it.
	Provisioned ProvisionedFunc
	// NoCapacity makes Refresh only (re)connect backends: no "ceph df", no
	// scan of the volume index. The node plugin sets it: capacity is the
	// controller's business, and a node's credentials need not allow it.
	NoCapacity bool

	mu      sync.RWMutex
	entries map[string]*entry
}

type entry struct {
	cfg     config.Backend
	cluster Cluster // nil while down
	fsid    string  // remembered after the first connection, even while down
	poolID  int64
	lastErr error
}

// NewManager prepares the backends of cfg; nothing is connected until Refresh.
func NewManager(cfg *config.Config, connect Connector, log *slog.Logger) *Manager {
	m := &Manager{
		cfg: cfg, connect: connect, log: log,
		sched:   scheduler.NewState(),
		timeout: time.Duration(cfg.CephTimeoutSeconds) * time.Second,
		entries: map[string]*entry{},
	}
	for _, b := range cfg.Backends {
		m.entries[b.Name] = &entry{cfg: b, poolID: -1}
		m.sched.Set(schedView(b, "", false, Stats{}, 0))
	}
	m.Provisioned = m.provisionedFromIndex
	return m
}

// provisionedFromIndex sums the volume index in the registry backend.
func (m *Manager) provisionedFromIndex(ctx context.Context) (map[string]uint64, error) {
	reg, err := m.Registry()
	if err != nil {
		return nil, err
	}
	return records.NewRegistry(reg).ProvisionedByBackend(ctx)
}

func schedView(b config.Backend, fsid string, up bool, st Stats, provisioned uint64) scheduler.Backend {
	return scheduler.Backend{
		Name: b.Name, Zone: b.Zone, ClusterID: fsid, Up: up,
		TotalBytes: st.TotalBytes, FreeBytes: st.FreeBytes, ProvisionedBytes: provisioned,
		ReservedPercentage: b.ReservedPercentage, MaxOverSubscriptionRatio: b.MaxOverSubscriptionRatio,
		Capabilities: b.Capabilities,
	}
}

// Scheduler is the placement state fed by this manager.
func (m *Manager) Scheduler() *scheduler.State { return m.sched }

// Config is the configuration the manager was built from.
func (m *Manager) Config() *config.Config { return m.cfg }

// Run refreshes every interval until ctx ends. Call Refresh once first.
func (m *Manager) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m.Refresh(ctx)
		}
	}
}

// Refresh connects backends that are down, re-reads every backend's capacity,
// and marks down those that do not answer. Backends are probed in parallel so
// one dead cluster costs one timeout, not one per backend.
func (m *Manager) Refresh(ctx context.Context) {
	names := m.Names()
	var wg sync.WaitGroup
	stats := make([]Stats, len(names))
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stats[i] = m.refreshOne(ctx, name)
		}()
	}
	wg.Wait()

	var provisioned map[string]uint64
	if m.Provisioned != nil && !m.NoCapacity {
		pctx, cancel := context.WithTimeout(ctx, m.timeout)
		p, err := m.Provisioned(pctx)
		cancel()
		if err != nil {
			m.log.Warn("could not read provisioned capacity; keeping local figures", "error", err)
		} else {
			provisioned = p
		}
	}
	for i, name := range names {
		m.mu.RLock()
		e := m.entries[name]
		up, fsid := e.cluster != nil, e.fsid
		m.mu.RUnlock()
		prov := provisioned[name]
		if provisioned == nil {
			if cur, ok := m.sched.Get(name); ok {
				prov = cur.ProvisionedBytes
			}
		}
		m.sched.Set(schedView(e.cfg, fsid, up, stats[i], prov))
	}
}

func (m *Manager) refreshOne(ctx context.Context, name string) Stats {
	m.mu.RLock()
	e := m.entries[name]
	cl := e.cluster
	m.mu.RUnlock()

	ctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	if cl == nil {
		c, err := m.connect(ctx, e.cfg)
		if err != nil {
			m.setDown(name, nil, err)
			return Stats{}
		}
		cl = c
		m.mu.Lock()
		wasDown := e.lastErr != nil
		e.cluster, e.fsid, e.poolID, e.lastErr = c, c.ClusterID(), c.PoolID(), nil
		m.mu.Unlock()
		if wasDown {
			m.log.Info("backend is back up", "backend", name, "fsid", c.ClusterID(), "pool", e.cfg.Pool)
		} else {
			m.log.Info("backend connected", "backend", name, "fsid", c.ClusterID(), "pool", e.cfg.Pool, "zone", e.cfg.Zone)
		}
	}
	if m.NoCapacity {
		return Stats{}
	}
	st, err := cl.Stats(ctx)
	if err != nil {
		m.setDown(name, cl, err)
		return Stats{}
	}
	return st
}

func (m *Manager) setDown(name string, cl Cluster, err error) {
	m.mu.Lock()
	e := m.entries[name]
	first := e.lastErr == nil
	e.cluster, e.lastErr = nil, err
	m.mu.Unlock()
	if cl != nil {
		// Requests may still hold cl: Close only refuses their new calls
		// and frees the connection after the last running call returns.
		// Freeing a hung connection can itself hang, hence the goroutine.
		go cl.Close()
	}
	if first {
		m.log.Error("backend is down; the scheduler skips it until it answers again", "backend", name, "error", err)
	}
}

// Names lists the backends in configuration order.
func (m *Manager) Names() []string {
	names := make([]string, 0, len(m.cfg.Backends))
	for _, b := range m.cfg.Backends {
		names = append(names, b.Name)
	}
	return names
}

// ErrDown is returned for a backend that is configured but not reachable.
var ErrDown = errors.New("backend is down")

// Get returns the connection of a backend that is up.
func (m *Manager) Get(name string) (Cluster, config.Backend, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	e, ok := m.entries[name]
	if !ok {
		return nil, config.Backend{}, fmt.Errorf("no backend is named %q", name)
	}
	if e.cluster == nil {
		return nil, e.cfg, fmt.Errorf("backend %q: %w (%v)", name, ErrDown, e.lastErr)
	}
	return e.cluster, e.cfg, nil
}

// Registry is the backend that holds Basalt's records.
func (m *Manager) Registry() (Cluster, error) {
	c, _, err := m.Get(m.cfg.RegistryBackend)
	return c, err
}

// Locate finds the backend holding pool poolID of cluster fsid (in the
// 32-hex form of volume IDs). It reports ErrDown when no up backend matches
// but some backend has never been reached, because the volume may be there.
func (m *Manager) Locate(fsidHex string, poolID int64) (string, Cluster, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var unknown []string
	for _, name := range m.Names() {
		e := m.entries[name]
		if e.fsid == "" {
			unknown = append(unknown, name)
			continue
		}
		if hexFSID(e.fsid) == fsidHex && e.poolID == poolID {
			if e.cluster == nil {
				return name, nil, fmt.Errorf("backend %q: %w (%v)", name, ErrDown, e.lastErr)
			}
			return name, e.cluster, nil
		}
	}
	if len(unknown) > 0 {
		return "", nil, fmt.Errorf("volume's cluster is not among the reachable backends and %v %w", unknown, ErrDown)
	}
	return "", nil, ErrNotFound
}

func hexFSID(fsid string) string {
	out := make([]byte, 0, 32)
	for i := 0; i < len(fsid); i++ {
		c := fsid[i]
		switch {
		case c == '-':
		case c >= 'A' && c <= 'F':
			out = append(out, c+'a'-'A')
		default:
			out = append(out, c)
		}
	}
	return string(out)
}

// Clusters returns one up backend per distinct Ceph cluster, keyed by fsid:
// where to look for a golden image.
func (m *Manager) Clusters() map[string]Cluster {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := map[string]Cluster{}
	for _, name := range m.Names() {
		e := m.entries[name]
		if e.cluster != nil {
			if _, ok := out[e.fsid]; !ok {
				out[e.fsid] = e.cluster
			}
		}
	}
	return out
}

// Down reports which backends are down (or never reached), sorted.
func (m *Manager) Down() []string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var down []string
	for name, e := range m.entries {
		if e.cluster == nil {
			down = append(down, name)
		}
	}
	sort.Strings(down)
	return down
}

// Up reports which backends are up, sorted.
func (m *Manager) Up() []string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var up []string
	for name, e := range m.entries {
		if e.cluster != nil {
			up = append(up, name)
		}
	}
	sort.Strings(up)
	return up
}

// Close closes every connection.
func (m *Manager) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range m.entries {
		if e.cluster != nil {
			e.cluster.Close()
			e.cluster = nil
		}
	}
}
