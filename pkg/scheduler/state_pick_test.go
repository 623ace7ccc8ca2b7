package scheduler

import (
	"errors"
	"sync"
	"testing"
)

func TestPickChargesAtomically(t *testing.T) {
	s := NewState()
	for _, n := range []string{"a", "b"} {
		s.Set(Backend{Name: n, Zone: "z", Up: true, TotalBytes: 100 << 30, FreeBytes: 100 << 30, MaxOverSubscriptionRatio: 1})
	}
	var mu sync.Mutex
	count := map[string]int{}
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := s.Pick(Request{SizeBytes: 1 << 30}, nil)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			count[c.Backend.Name]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if count["a"] != 10 || count["b"] != 10 {
		t.Fatalf("20 concurrent picks split %v, want 10/10", count)
	}
	a, _ := s.Get("a")
	if a.ProvisionedBytes != 10<<30 {
		t.Fatalf("a provisioned %d", a.ProvisionedBytes)
	}
}

func TestPickExcludes(t *testing.T) {
	s := NewState()
	s.Set(Backend{Name: "a", Up: true, TotalBytes: 100 << 30, FreeBytes: 100 << 30, MaxOverSubscriptionRatio: 1})
	s.Set(Backend{Name: "b", Up: true, TotalBytes: 10 << 30, FreeBytes: 10 << 30, MaxOverSubscriptionRatio: 1})
	c, err := s.Pick(Request{SizeBytes: 1 << 30}, map[string]bool{"a": true})
	if err != nil || c.Backend.Name != "b" {
		t.Fatalf("got %v %v, want b", c.Backend.Name, err)
	}
	_, err = s.Pick(Request{SizeBytes: 1 << 30}, map[string]bool{"a": true, "b": true})
	var nc *NoCandidateError
	if !errors.As(err, &nc) {
		t.Fatalf("all excluded: %v", err)
	}
	if a, _ := s.Get("a"); !a.Up || a.ProvisionedBytes != 0 {
		t.Fatalf("exclusion must not change the shared state: %+v", a)
	}
}

// A refresh that does not yet know the creates in flight must not forget
// their charges; once settled, the refreshed figure is authoritative.
func TestRefreshKeepsInFlightCharges(t *testing.T) {
	s := NewState()
	base := Backend{Name: "a", Up: true, TotalBytes: 100 << 30, FreeBytes: 100 << 30, MaxOverSubscriptionRatio: 1}
	s.Set(base)
	if _, err := s.Pick(Request{SizeBytes: 3 << 30}, nil); err != nil {
		t.Fatal(err)
	}
	s.Set(base) // refresh from an index that does not list the create yet
	if a, _ := s.Get("a"); a.ProvisionedBytes != 3<<30 {
		t.Fatalf("in-flight charge lost by a refresh: %d", a.ProvisionedBytes)
	}
	s.Settle("a", 3<<30)
	withIt := base
	withIt.ProvisionedBytes = 3 << 30
	s.Set(withIt) // the index now lists it
	if a, _ := s.Get("a"); a.ProvisionedBytes != 3<<30 {
		t.Fatalf("settled create counted %d, want 3 GiB once", a.ProvisionedBytes)
	}
	if _, err := s.Pick(Request{SizeBytes: 1 << 30}, nil); err != nil {
		t.Fatal(err)
	}
	s.Abandon("a", 1<<30)
	s.Set(withIt)
	if a, _ := s.Get("a"); a.ProvisionedBytes != 3<<30 {
		t.Fatalf("abandoned create still charged: %d", a.ProvisionedBytes)
	}
}
