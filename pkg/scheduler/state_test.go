package scheduler

import (
	"fmt"
	"slices"
	"sync"
	"testing"
)

func TestStatePickSpreadsBurst(t *testing.T) {
	s := NewState()
	s.Set(be("a", "z"))
	s.Set(be("b", "z"))
	var got []string
	for range 6 {
		c, err := s.Pick(Request{SizeBytes: 10 * GiB}, nil)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, c.Backend.Name)
	}
	if want := []string{"a", "b", "a", "b", "a", "b"}; !slices.Equal(got, want) {
		t.Fatalf("burst placed on %v, want %v", got, want)
	}
	if b, _ := s.Get("a"); b.ProvisionedBytes != 30*GiB {
		t.Fatalf("a provisioned = %d, want 30 GiB", b.ProvisionedBytes)
	}
	// Charges also feed the capacity filter: neither has 71 GiB left.
	c, err := s.Pick(Request{SizeBytes: 71 * GiB}, nil)
	if err == nil {
		t.Fatalf("placed 71 GiB on %v after charging 30 of 100 GiB", c.Backend.Name)
	}
}

func TestStateRelease(t *testing.T) {
	s := NewState()
	b := be("a", "z")
	b.ProvisionedBytes = 3 * GiB
	s.Set(b)
	if _, err := s.Pick(Request{SizeBytes: 5 * GiB}, nil); err != nil {
		t.Fatal(err)
	}
	s.Release("a", 2*GiB)
	if got, _ := s.Get("a"); got.ProvisionedBytes != 6*GiB {
		t.Fatalf("provisioned = %d, want 6 GiB", got.ProvisionedBytes)
	}
	s.Release("a", 10*GiB)
	if got, _ := s.Get("a"); got.ProvisionedBytes != 0 {
		t.Fatalf("provisioned = %d, want floor at 0", got.ProvisionedBytes)
	}
	big := be("a", "z")
	big.ProvisionedBytes = ^uint64(0)
	s.Set(big) // the in-flight 5 GiB must saturate, not wrap
	if got, _ := s.Get("a"); got.ProvisionedBytes != ^uint64(0) {
		t.Fatalf("charge wrapped: %d", got.ProvisionedBytes)
	}
}

func TestStateSetReplaces(t *testing.T) {
	s := NewState()
	b := be("a", "z")
	b.ProvisionedBytes = 10 * GiB
	b.Capabilities = map[string]string{"old": "1"}
	s.Set(b)
	s.Set(be("b", "z"))
	if c, err := s.Pick(Request{SizeBytes: 5 * GiB, Backend: "a"}, nil); err != nil || c.Backend.Name != "a" {
		t.Fatal(err)
	}
	s.Settle("a", 5*GiB)
	b.Up = false
	s.Set(b)

	b.Up = true
	b.ProvisionedBytes = 12 * GiB // authoritative figure, already includes the 5
	b.FreeBytes = 42 * GiB
	b.Capabilities = map[string]string{"new": "2"}
	s.Set(b)
	got, ok := s.Get("a")
	if !ok || got.ProvisionedBytes != 12*GiB || got.FreeBytes != 42*GiB || !got.Up {
		t.Fatalf("after Set: %+v, want provisioned 12 GiB, free 42 GiB, up", got)
	}
	if _, stale := got.Capabilities["old"]; stale || got.Capabilities["new"] != "2" {
		t.Fatalf("capabilities = %v, want only new=2", got.Capabilities)
	}
	// Re-setting keeps the original insertion order.
	var order []string
	for _, b := range s.Snapshot() {
		order = append(order, b.Name)
	}
	if !slices.Equal(order, []string{"a", "b"}) {
		t.Fatalf("Snapshot order = %v, want [a b]", order)
	}
}

func TestStateCopiesAndUnknownNames(t *testing.T) {
	s := NewState()
	caps := map[string]string{"tier": "fast"}
	b := be("a", "z")
	b.Capabilities = caps
	s.Set(b)
	caps["tier"] = "mutated-by-caller"
	snap := s.Snapshot()
	snap[0].Capabilities["tier"] = "mutated-by-snapshot"
	got, _ := s.Get("a")
	got.Capabilities["tier"] = "mutated-by-get"
	if got, _ := s.Get("a"); got.Capabilities["tier"] != "fast" {
		t.Fatalf("State shares maps with callers: tier = %q", got.Capabilities["tier"])
	}

	s.Settle("ghost", GiB)
	s.Abandon("ghost", GiB)
	s.Release("ghost", GiB)
	if _, ok := s.Get("ghost"); ok || len(s.Snapshot()) != 1 {
		t.Fatal("operations on an unknown name created it")
	}

	down := be("a", "z")
	down.Up = false
	s.Set(down)
	if _, err := s.Pick(Request{}, nil); err == nil {
		t.Fatal("placed on a backend that is down")
	}
	s.Set(be("a", "z"))
	if _, err := s.Pick(Request{}, nil); err != nil {
		t.Fatalf("backend up again: %v", err)
	}
}

func TestStateConcurrent(t *testing.T) {
	s := NewState()
	for i := range 4 {
		s.Set(be(fmt.Sprintf("b%d", i), "z"))
	}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				c, err := s.Pick(Request{SizeBytes: GiB}, nil)
				if err != nil {
					t.Error(err)
					return
				}
				name := c.Backend.Name
				_ = s.Snapshot()
				_, _ = s.Get(name)
				s.Set(be(fmt.Sprintf("b%d", (w+i)%4), "z"))
				s.Abandon(name, GiB)
			}
		}()
	}
	wg.Wait()
	for _, b := range s.Snapshot() {
		if b.ProvisionedBytes != 0 {
			t.Errorf("%s provisioned %d after balanced Pick/Abandon", b.Name, b.ProvisionedBytes)
		}
	}
}
