package ceph

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A call that never returns (a hung librados call) must release its caller
// at the deadline, so that no lock is held forever.
func TestCallDeadline(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	start := time.Now()
	_, err := call(context.Background(), 50*time.Millisecond, "stuck op", func() (int, error) {
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
	if _, err := call(ctx, time.Hour, "stuck op", func() (int, error) { <-block; return 0, nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want Canceled", err)
	}

	v, err := call(context.Background(), time.Second, "quick op", func() (int, error) { return 7, nil })
	if err != nil || v != 7 {
		t.Fatalf("quick op: %v %v", v, err)
	}
	if _, err := call(context.Background(), time.Second, "failing op", func() (int, error) { return 0, errors.New("boom") }); err == nil || err.Error() != "failing op: boom" {
		t.Fatalf("failing op: %v", err)
	}
}

func TestEncodeStringMap(t *testing.T) {
	got := encodeStringMap([]string{"a", "bc"}, map[string]string{"a": "x", "bc": ""})
	want := []byte{2, 0, 0, 0, 1, 0, 0, 0, 'a', 1, 0, 0, 0, 'x', 2, 0, 0, 0, 'b', 'c', 0, 0, 0, 0}
	if string(got) != string(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}
