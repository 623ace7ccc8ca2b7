package scheduler

import (
	"strings"
	"testing"
)

func TestGrowChargesWithinVirtualRoom(t *testing.T) {
	const gib = 1 << 30
	s := NewState()
	s.Set(Backend{Name: "a", Up: true, TotalBytes: 10 * gib, FreeBytes: 10 * gib, ProvisionedBytes: 15 * gib, MaxOverSubscriptionRatio: 2})
	if why := s.Grow("a", 6*gib); !strings.Contains(why, "virtual free") {
		t.Fatalf("growth past the 20 GiB virtual total admitted: %q", why)
	}
	if why := s.Grow("a", 5*gib); why != "" {
		t.Fatalf("growth within the virtual room refused: %q", why)
	}
	if b, _ := s.Get("a"); b.ProvisionedBytes != 20*gib {
		t.Fatalf("provisioned %d after the growth, want 20 GiB", b.ProvisionedBytes)
	}
	// A refresh before the growth is recorded keeps it charged; Settle
	// hands it over to the refresh's figures.
	s.Set(Backend{Name: "a", Up: true, TotalBytes: 10 * gib, FreeBytes: 10 * gib, ProvisionedBytes: 15 * gib, MaxOverSubscriptionRatio: 2})
	if b, _ := s.Get("a"); b.ProvisionedBytes != 20*gib {
		t.Fatalf("a refresh forgot the growth in flight: %d", b.ProvisionedBytes)
	}
	s.Settle("a", 5*gib)
	s.Set(Backend{Name: "a", Up: false})
	if why := s.Grow("a", 1); why != ReasonDown {
		t.Fatalf("growth on a down backend: %q", why)
	}
	if why := s.Grow("b", 1); why == "" {
		t.Fatal("growth on an unknown backend admitted")
	}
}
