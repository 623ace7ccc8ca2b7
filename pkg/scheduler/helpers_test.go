package scheduler

import (
	"errors"
	"slices"
	"testing"
)

const GiB = 1 << 30

// be returns an up backend with 100 GiB free and no over-subscription, so
// that each test only states what it is about.
func be(name, zone string) Backend {
	return Backend{
		Name: name, Zone: zone, ClusterID: "c1", Up: true,
		TotalBytes: 100 * GiB, FreeBytes: 100 * GiB,
		MaxOverSubscriptionRatio: 1,
	}
}

func seg(zone string) map[string]string { return map[string]string{TopologyKey: zone} }

func names(cs []Candidate) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.Backend.Name
	}
	return out
}

func noCandidate(t *testing.T, err error) *NoCandidateError {
	t.Helper()
	var nc *NoCandidateError
	if !errors.As(err, &nc) {
		t.Fatalf("error = %v (%T), want *NoCandidateError", err, err)
	}
	return nc
}

func wantOrder(t *testing.T, cs []Candidate, err error, want ...string) {
	t.Helper()
	if err != nil {
		t.Fatalf("Schedule error: %v", err)
	}
	if got := names(cs); !slices.Equal(got, want) {
		t.Fatalf("order = %v, want %v", got, want)
	}
}
