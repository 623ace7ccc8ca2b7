package backend

import (
	"context"
	"io"
	"log/slog"
	"reflect"
	"sync/atomic"
	"testing"

	"github.com/basalt-csi/basalt/pkg/config"
)

// statsCounter is a connected cluster that counts capacity reads.
type statsCounter struct {
	Cluster // nil: only the methods below are used
	stats   *atomic.Int32
}

func (s statsCounter) ClusterID() string { return "5f0e7c2a-1b3d-4e5f-8a9b-0c1d2e3f4a5b" }
func (s statsCounter) PoolID() int64     { return 1 }
func (s statsCounter) Close()            {}
func (s statsCounter) Stats(context.Context) (Stats, error) {
	s.stats.Add(1)
	return Stats{TotalBytes: 10, FreeBytes: 10}, nil
}

// A node plugin's manager connects backends but never reads capacity or
// scans the volume index: that is the controller's job (and credentials).
func TestNoCapacityOnlyConnects(t *testing.T) {
	cfg := &config.Config{Backends: []config.Backend{{Name: "a", Pool: "p", Zone: "z"}}, CephTimeoutSeconds: 1, RegistryBackend: "a"}
	for _, noCap := range []bool{false, true} {
		var stats, scans atomic.Int32
		m := NewManager(cfg, func(context.Context, config.Backend) (Cluster, error) {
			return statsCounter{stats: &stats}, nil
		}, slog.New(slog.NewTextHandler(io.Discard, nil)))
		m.Provisioned = func(context.Context) (map[string]uint64, error) { scans.Add(1); return nil, nil }
		m.NoCapacity = noCap
		m.Refresh(context.Background())
		if len(m.Up()) != 1 {
			t.Fatalf("noCapacity=%v: backend not up", noCap)
		}
		if got := stats.Load() + scans.Load(); (got == 0) != noCap {
			t.Errorf("noCapacity=%v: %d capacity reads and %d index scans", noCap, stats.Load(), scans.Load())
		}
	}
}

func TestClientAddrList(t *testing.T) {
	for in, want := range map[string][]string{
		"[v2:10.0.0.5:0/42,v1:10.0.0.5:0/42]": {"10.0.0.5:0/42"},
		"[v2:10.0.0.5:0/42,v1:10.0.0.5:0/43]": {"10.0.0.5:0/42", "10.0.0.5:0/43"},
		"127.0.0.1:0/378046193":               {"127.0.0.1:0/378046193"},
		"":                                    nil,
	} {
		if got := ClientAddrList(in); !reflect.DeepEqual(got, want) {
			t.Errorf("ClientAddrList(%q) = %v, want %v", in, got, want)
		}
	}
}
