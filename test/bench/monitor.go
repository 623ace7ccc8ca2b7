package main

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// interference records what else ran on the machine during the measurements:
// other Ceph clusters (integration tests, make run) and the load average.
// On a 2-core machine either can move the numbers a lot.
type interference struct {
	ForeignCeph    []string `json:"foreign_ceph_clusters"` // conf paths of ceph daemons not ours
	LoadAvgMax     float64  `json:"load_avg_1m_max"`
	LoadAvgStart   float64  `json:"load_avg_1m_start"`
	Samples        int      `json:"samples"`
	SamplesForeign int      `json:"samples_with_foreign_ceph"`
}

func loadAvg1() float64 {
	f := strings.Fields(readFile("/proc/loadavg"))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// foreignCeph lists the -c paths of ceph-mon/mgr/osd processes that are not
// of our cluster (ourConf).
func foreignCeph(ourConf string) []string {
	seen := map[string]bool{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		switch filepath.Base(args[0]) {
		case "ceph-osd", "ceph-mon", "ceph-mgr":
		default:
			continue
		}
		conf := "?"
		for i, a := range args {
			if a == "-c" && i+1 < len(args) {
				conf = args[i+1]
			}
		}
		if conf != ourConf {
			seen[conf] = true
		}
	}
	var out []string
	for c := range seen {
		out = append(out, c)
	}
	sort.Strings(out)
	return out
}

type monitor struct {
	mu sync.Mutex
	interference
}

// watch samples every 2 s until ctx ends.
func (m *monitor) watch(ctx context.Context, ourConf string) {
	m.mu.Lock()
	m.LoadAvgStart = loadAvg1()
	m.mu.Unlock()
	for {
		f := foreignCeph(ourConf)
		l := loadAvg1()
		m.mu.Lock()
		m.Samples++
		if len(f) > 0 {
			m.SamplesForeign++
		}
		for _, c := range f {
			known := false
			for _, k := range m.ForeignCeph {
				known = known || k == c
			}
			if !known {
				m.ForeignCeph = append(m.ForeignCeph, c)
			}
		}
		m.LoadAvgMax = max(m.LoadAvgMax, l)
		m.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}

func (m *monitor) snapshot() interference {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.interference
	s.ForeignCeph = append([]string{}, m.ForeignCeph...)
	return s
}
