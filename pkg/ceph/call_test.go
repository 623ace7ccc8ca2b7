package ceph

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/basalt-csi/basalt/pkg/backend"
	"github.com/basalt-csi/basalt/pkg/metrics"
)

// A call that never returns (a hung librados call) must release its caller
// at the deadline, so that no lock is held forever.
func TestCallDeadline(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	start := time.Now()
	_, err := call(context.Background(), newScope(50*time.Millisecond), "stuck op", func() (int, error) {
		<-block
		return 1, nil
	})
	if !errors.Is(err, ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want ErrTimeout wrapping DeadlineExceeded", err)
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Fatalf("caller held for %v", waited)
	}

	// The caller's own cancellation also ends the wait.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := call(ctx, newScope(time.Hour), "stuck op", func() (int, error) { <-block; return 0, nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want Canceled", err)
	}

	v, err := call(context.Background(), newScope(time.Second), "quick op", func() (int, error) { return 7, nil })
	if err != nil || v != 7 {
		t.Fatalf("quick op: %v %v", v, err)
	}
	if _, err := call(context.Background(), newScope(time.Second), "failing op", func() (int, error) { return 0, errors.New("boom") }); err == nil || err.Error() != "failing op: boom" {
		t.Fatalf("failing op: %v", err)
	}
}

// Closing a scope while a call it abandoned still runs must not free the
// handles under that call (the SIGSEGV in rados_ioctx_create(NULL) when a
// stalled backend was marked down); calls after close are refused with a
// retryable error; a child scope keeps its parent open.
func TestScopeOutlivesAbandonedCalls(t *testing.T) {
	root := newScope(20 * time.Millisecond)
	var freed atomic.Int32
	root.onFree(func() { freed.Add(1) })

	child, err := root.child()
	if err != nil {
		t.Fatal(err)
	}
	childFreed := make(chan struct{})
	child.onFree(func() { close(childFreed) })

	block := make(chan struct{})
	returned := make(chan struct{})
	if _, err := call(context.Background(), child, "stuck op", func() (int, error) {
		defer close(returned)
		<-block
		if freed.Load() != 0 {
			t.Error("connection freed while a call was still running in it")
		}
		return 0, nil
	}); !errors.Is(err, ErrTimeout) {
		t.Fatalf("err = %v, want ErrTimeout", err)
	}
	child.close()
	root.close()
	root.close() // idempotent
	if freed.Load() != 0 {
		t.Fatal("connection freed while an abandoned call runs")
	}
	if _, err := call(context.Background(), root, "late op", func() (int, error) {
		t.Error("a call ran on a closed connection")
		return 0, nil
	}); !errors.Is(err, ErrClosed) || !errors.Is(err, backend.ErrDown) {
		t.Fatalf("call after close: %v, want ErrClosed wrapping backend.ErrDown", err)
	}
	if _, err := root.child(); !errors.Is(err, ErrClosed) {
		t.Fatalf("child of a closed scope: %v", err)
	}

	close(block)
	<-returned
	select {
	case <-childFreed:
	case <-time.After(5 * time.Second):
		t.Fatal("child scope not freed after its last call returned")
	}
	deadline := time.Now().Add(5 * time.Second)
	for freed.Load() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("connection freed %d times, want 1", freed.Load())
		}
		time.Sleep(time.Millisecond)
	}
}

func TestEncodeStringMap(t *testing.T) {
	got := encodeStringMap([]string{"a", "bc"}, map[string]string{"a": "x", "bc": ""})
	want := []byte{2, 0, 0, 0, 1, 0, 0, 0, 'a', 1, 0, 0, 0, 'x', 2, 0, 0, 0, 'b', 'c', 0, 0, 0, 0}
	if string(got) != string(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

// RemoveImage's wait: an operation abandoned by its caller keeps its image
// busy until its body returns; other images are not held up.
func TestInflightWaitsForAbandonedWrites(t *testing.T) {
	var f inflight
	end := f.start("img")
	end2 := f.start("img")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := f.wait(ctx, "img"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait while writing: %v", err)
	}
	if err := f.wait(context.Background(), "other"); err != nil {
		t.Fatalf("an idle image waited: %v", err)
	}
	end()
	end() // idempotent: the second operation still runs
	ctx2, cancel2 := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel2()
	if err := f.wait(ctx2, "img"); err == nil {
		t.Fatal("wait returned while an operation still runs")
	}
	done := make(chan error)
	go func() { done <- f.wait(context.Background(), "img") }()
	end2()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("wait did not return after the last operation ended")
	}
}

// Calls are counted by their operation: the verb their description starts
// with, never the object named after it; an abandoned call is a timeout only
// at its deadline, not when its caller gave up.
func TestCallMetrics(t *testing.T) {
	for what, op := range map[string]string{"cloning volumes/img-1": "cloning", "reading basalt/obj": "reading", "ceph df": "ceph", "stuck": "stuck"} {
		if got := opOf(what); got != op {
			t.Errorf("opOf(%q) = %q, want %q", what, got, op)
		}
	}
	count := func(name, op string) float64 {
		fams, err := metrics.Registry.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fams {
			for _, m := range f.GetMetric() {
				if f.GetName() == name && len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == op {
					return m.GetCounter().GetValue() + float64(m.GetHistogram().GetSampleCount())
				}
			}
		}
		return 0
	}
	block := make(chan struct{})
	defer close(block)
	_, _ = call(context.Background(), newScope(10*time.Millisecond), "hanging obj-1", func() (int, error) { <-block; return 0, nil })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, _ = call(ctx, newScope(time.Hour), "hanging obj-2", func() (int, error) { <-block; return 0, nil })
	_, _ = call(context.Background(), newScope(time.Second), "hanging obj-3", func() (int, error) { return 0, nil })
	if n := count("basalt_ceph_call_duration_seconds", "hanging"); n != 3 {
		t.Errorf("%v calls timed, want 3", n)
	}
	if n := count("basalt_ceph_call_timeouts_total", "hanging"); n != 1 {
		t.Errorf("%v timeouts, want 1 (the deadline, not the cancelled caller)", n)
	}
	if n := count("basalt_ceph_call_failures_total", "hanging"); n != 2 {
		t.Errorf("%v failures, want 2", n)
	}
}
