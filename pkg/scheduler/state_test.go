package scheduler

import (
	"fmt"
	"slices"
	"sync"
	"testing"
)

func TestStateConsumeSpreadsBurst(t *testing.T) {
	s := NewState()
	s.Set(be("a", "z"))
	s.Set(be("b", "z"))
	var got []string
	for range 6 {
		cs, err := s.Place(Request{SizeBytes: 10 * GiB})
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, cs[0].Backend.Name)
		s.Consume(cs[0].Backend.Name, 10*GiB)
	}
	if want := []string{"a", "b", "a", "b", "a", "b"}; !slices.Equal(got, want) {
		t.Fatalf("burst placed on %v, want %v", got, want)
	}
	if b, _ := s.Get("a"); b.ProvisionedBytes != 30*GiB {
		t.Fatalf("a provisioned = %d, want 30 GiB", b.ProvisionedBytes)
	}
	// Consumption also feeds the capacity filter: a no longer has 71 GiB.
	cs, err := s.Place(Request{SizeBytes: 71 * GiB})
	if err == nil {
		t.Fatalf("placed 71 GiB on %v after consuming 30 of 100 GiB", names(cs))
	}
}

func TestStateRelease(t *testing.T) {
	s := NewState()
	b := be("a", "z")
	b.ProvisionedBytes = 3 * GiB
	s.Set(b)
	s.Consume("a", 5*GiB)
	s.Release("a", 2*GiB)
	if got, _ := s.Get("a"); got.ProvisionedBytes != 6*GiB {
		t.Fatalf("provisioned = %d, want 6 GiB", got.ProvisionedBytes)
	}
	s.Release("a", 10*GiB)
	if got, _ := s.Get("a"); got.ProvisionedBytes != 0 {
		t.Fatalf("provisioned = %d, want floor at 0", got.ProvisionedBytes)
	}
	s.Consume("a", ^uint64(0))
	s.Consume("a", 1)
	if got, _ := s.Get("a"); got.ProvisionedBytes != ^uint64(0) {
		t.Fatalf("Consume wrapped: %d", got.ProvisionedBytes)
	}
}

func TestStateSetReplaces(t *testing.T) {
	s := NewState()
	b := be("a", "z")
	b.ProvisionedBytes = 10 * GiB
	b.Capabilities = map[string]string{"old": "1"}
	s.Set(b)
	s.Set(be("b", "z"))
	s.Consume("a", 5*GiB)
	s.SetUp("a", false)

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

	s.SetUp("ghost", false)
	s.Consume("ghost", GiB)
	s.Release("ghost", GiB)
	if _, ok := s.Get("ghost"); ok || len(s.Snapshot()) != 1 {
		t.Fatal("operations on an unknown name created it")
	}

	s.SetUp("a", false)
	if _, err := s.Place(Request{}); err == nil {
		t.Fatal("placed on a backend marked down")
	}
	s.SetUp("a", true)
	if _, err := s.Place(Request{}); err != nil {
		t.Fatalf("backend marked up again: %v", err)
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
				cs, err := s.Place(Request{SizeBytes: GiB, Capabilities: nil})
				if err != nil {
					t.Error(err)
					return
				}
				name := cs[0].Backend.Name
				s.Consume(name, GiB)
				_ = s.Snapshot()
				_, _ = s.Get(name)
				s.SetUp(fmt.Sprintf("b%d", (w+i)%4), true)
				s.Release(name, GiB)
			}
		}()
	}
	wg.Wait()
	for _, b := range s.Snapshot() {
		if b.ProvisionedBytes != 0 {
			t.Errorf("%s provisioned %d after balanced Consume/Release", b.Name, b.ProvisionedBytes)
		}
	}
}
