// Package locks serialises operations on one key (a volume name or ID) inside
// a process. A waiter gives up when its context ends, so a stuck holder can
// delay others only until their own deadlines, never forever; holders are
// themselves bounded because every Ceph call they make has a deadline.
package locks

import (
	"context"
	"sync"
)

// Keyed is a set of mutexes created on demand and dropped when unused.
type Keyed struct {
	mu    sync.Mutex
	locks map[string]*entry
}

type entry struct {
	ch   chan struct{}
	refs int
}

// New returns an empty lock set.
func New() *Keyed { return &Keyed{locks: map[string]*entry{}} }

// Lock takes the lock for key, or returns ctx.Err() if ctx ends first.
// The returned function releases it and must be called exactly once.
func (k *Keyed) Lock(ctx context.Context, key string) (func(), error) {
	k.mu.Lock()
	e := k.locks[key]
	if e == nil {
		e = &entry{ch: make(chan struct{}, 1)}
		k.locks[key] = e
	}
	e.refs++
	k.mu.Unlock()

	select {
	case e.ch <- struct{}{}:
		var once sync.Once
		return func() { once.Do(func() { <-e.ch; k.drop(key, e) }) }, nil
	case <-ctx.Done():
		k.drop(key, e)
		return nil, ctx.Err()
	}
}

func (k *Keyed) drop(key string, e *entry) {
	k.mu.Lock()
	defer k.mu.Unlock()
	e.refs--
	if e.refs == 0 {
		delete(k.locks, key)
	}
}

// Len is the number of keys with holders or waiters (for tests and metrics).
func (k *Keyed) Len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.locks)
}
