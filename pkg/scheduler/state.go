package scheduler

import "sync"

// State is the scheduler's shared, mutable view of all backends.
//
// Statistics are refreshed only periodically, so between refreshes every
// placement would see the same "most free" backend and a burst of creates
// would pile onto it. Consume and Release adjust the local view immediately,
// as Cinder's HostState.consume_from_volume does; the next Set replaces the
// estimate with the authoritative figures.
type State struct {
	mu       sync.Mutex
	order    []string
	backends map[string]Backend
}

// NewState returns an empty State.
func NewState() *State {
	return &State{backends: map[string]Backend{}}
}

// Set replaces everything known about b.Name, including ProvisionedBytes, so
// that local estimates never outlive a refresh. A new name is appended to the
// insertion order, which keeps Snapshot (and error messages) stable.
func (s *State) Set(b Backend) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.backends[b.Name]; !ok {
		s.order = append(s.order, b.Name)
	}
	s.backends[b.Name] = b.clone()
}

// SetUp lets a failed probe or create take a backend out of placement at once,
// without waiting for, or faking, a statistics refresh. Unknown names are
// ignored.
func (s *State) SetUp(name string, up bool) {
	s.update(name, func(b *Backend) { b.Up = up })
}

// Snapshot returns deep copies in insertion order, so that callers may keep
// or mutate the result without holding the lock.
func (s *State) Snapshot() []Backend {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Backend, 0, len(s.order))
	for _, name := range s.order {
		out = append(out, s.backends[name].clone())
	}
	return out
}

// Get returns a deep copy of one backend.
func (s *State) Get(name string) (Backend, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.backends[name]
	return b.clone(), ok
}

// Place schedules over a snapshot. It does not consume: the caller does that
// for the candidate it actually uses, since the first may fail and be
// rescheduled.
func (s *State) Place(req Request) ([]Candidate, error) {
	return Schedule(s.Snapshot(), req)
}

// Consume adds a just-placed volume to the backend's provisioned total so the
// next placement sees it before the next refresh does. Unknown names are
// ignored; the sum saturates rather than wraps.
func (s *State) Consume(name string, bytes uint64) {
	s.update(name, func(b *Backend) { b.ProvisionedBytes = addSat(b.ProvisionedBytes, bytes) })
}

// Release undoes Consume after a failed create or a delete. It floors at zero
// because a refresh may already have dropped the volume from the figure.
func (s *State) Release(name string, bytes uint64) {
	s.update(name, func(b *Backend) { b.ProvisionedBytes = subSat(b.ProvisionedBytes, bytes) })
}

func (s *State) update(name string, f func(*Backend)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.backends[name]
	if !ok {
		return
	}
	f(&b)
	s.backends[name] = b
}

// Pick places req and charges the best candidate not in exclude, in one step
// under the lock, so that concurrent creates see each other's placements
// (Place followed by Consume would let two of them pick the same stale
// "most free" backend). The caller Releases the bytes if the create fails.
func (s *State) Pick(req Request, exclude map[string]bool) (Candidate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	backends := make([]Backend, 0, len(s.order))
	for _, name := range s.order {
		b := s.backends[name]
		if exclude[name] {
			b.Up = false // tried already: reported by the up filter if nothing else is left
		}
		backends = append(backends, b)
	}
	cands, err := Schedule(backends, req)
	if err != nil {
		return Candidate{}, err
	}
	best := cands[0]
	b := s.backends[best.Backend.Name]
	b.ProvisionedBytes = addSat(b.ProvisionedBytes, req.SizeBytes)
	s.backends[best.Backend.Name] = b
	return best, nil
}
