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
