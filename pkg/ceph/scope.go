package ceph

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/basalt-csi/basalt/pkg/backend"
	"github.com/basalt-csi/basalt/pkg/metrics"
)

// ErrTimeout marks a Ceph call that did not return before its deadline.
var ErrTimeout = errors.New("ceph call timed out")

// ErrClosed is returned by calls on a connection that has been closed (the
// backend was marked down): the backend is unavailable, retry later.
var ErrClosed = fmt.Errorf("connection closed: %w", backend.ErrDown)

// A scope owns librados/librbd handles (a cluster handle, an IOContext, open
// images) and frees them only after the last call that uses them has
// returned. librados calls cannot be cancelled: a caller stops waiting at its
// deadline, but the call goes on in its goroutine, so freeing a handle when
// the caller gives up would let that call run into freed memory (a SIGSEGV
// in rados_ioctx_create(NULL) when a stalled backend was closed). Every call
// enters the scope for as long as it really runs, however long its caller
// waited.
//
// A connection is the root scope; an operation that keeps handles across
// several calls (a copy between clusters, a clone from another pool) opens a
// child scope, which keeps its parent open until it is freed.
type scope struct {
	timeout time.Duration

	mu     sync.Mutex
	users  int
	closed bool
	frees  []func()
}

func newScope(timeout time.Duration) *scope { return &scope{timeout: timeout} }

// enter registers a running call; false once the scope is closed.
func (s *scope) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.users++
	return true
}

func (s *scope) leave() {
	s.mu.Lock()
	s.users--
	free := s.closed && s.users == 0
	s.mu.Unlock()
	if free {
		s.free()
	}
}

// onFree registers f to run when the scope is freed, after the handles
// registered later (last in, first out). Call it from inside a call of the
// scope (or before it is shared), so the scope cannot be freed meanwhile.
func (s *scope) onFree(f func()) {
	s.mu.Lock()
	s.frees = append(s.frees, f)
	s.mu.Unlock()
}

// close refuses new calls and frees the handles as soon as no call runs:
// now, or when the last abandoned call returns. Idempotent.
func (s *scope) close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	free := s.users == 0
	s.mu.Unlock()
	if free {
		s.free()
	}
}

func (s *scope) free() {
	s.mu.Lock()
	frees := s.frees
	s.frees = nil
	s.mu.Unlock()
	for i := len(frees) - 1; i >= 0; i-- {
		frees[i]()
	}
}

// child opens a scope for one operation's handles; it holds s open until it
// is closed and its own calls have returned.
func (s *scope) child() (*scope, error) {
	if !s.enter() {
		return nil, ErrClosed
	}
	c := newScope(s.timeout)
	c.onFree(s.leave)
	return c, nil
}

// call runs f in scope s with a deadline: the smaller of ctx's and the
// scope's timeout. f keeps the scope open until it returns, even after the
// caller stopped waiting.
func call[T any](ctx context.Context, s *scope, what string, f func() (T, error)) (T, error) {
	var zero T
	if !s.enter() {
		return zero, fmt.Errorf("%s: %w", what, ErrClosed)
	}
	if s.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.timeout)
		defer cancel()
	}
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		defer s.leave()
		v, err := f()
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		metrics.ObserveCeph(opOf(what), time.Since(start), r.err != nil, false)
		if r.err != nil {
			return r.v, fmt.Errorf("%s: %w", what, r.err)
		}
		return r.v, nil
	case <-ctx.Done():
		// Only a deadline is a timeout; a caller that gave up is not Ceph's
		// doing.
		metrics.ObserveCeph(opOf(what), time.Since(start), true, errors.Is(ctx.Err(), context.DeadlineExceeded))
		return zero, fmt.Errorf("%s: %w after %v: %w", what, ErrTimeout, s.timeout, ctx.Err())
	}
}

// opOf is the metrics label of a call: the verb its description starts
// with ("cloning", "reading", "listing", ...). Every description names the
// operation first and its object after, so the label is bounded by the
// code, never by a pool, image or object name.
func opOf(what string) string {
	if i := strings.IndexByte(what, ' '); i > 0 {
		return what[:i]
	}
	return what
}

// do is call for f without a result.
func do(ctx context.Context, s *scope, what string, f func() error) error {
	_, err := call(ctx, s, what, func() (struct{}, error) { return struct{}{}, f() })
	return err
}
