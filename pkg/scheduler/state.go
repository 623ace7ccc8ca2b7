package scheduler

import "sync"

// State is the scheduler's shared, mutable view of all backends.
//
// Statistics are refreshed only periodically, so between refreshes every
// placement would see the same "most free" backend and a burst of creates
// would pile onto it. Pick charges the chosen backend immediately, as
// Cinder's HostState.consume_from_volume does; the next Set replaces the
// estimate with the authoritative figures plus what is still in flight.
type State struct {
	mu       sync.Mutex
	order    []string
	backends map[string]Backend
	// inFlight is what Pick charged for creates that have not finished: a
	// refresh's authoritative figure cannot know them yet.
	inFlight map[string]uint64
}

// NewState returns an empty State.
func NewState() *State {
	return &State{backends: map[string]Backend{}, inFlight: map[string]uint64{}}
}

// Set replaces everything known about b.Name with a refresh's figures, plus
// the bytes of creates still in flight on it, so that local estimates never
// outlive a refresh and placements in progress are not forgotten. A new name
// is appended to the insertion order, which keeps Snapshot (and error
// messages) stable.
func (s *State) Set(b Backend) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.backends[b.Name]; !ok {
		s.order = append(s.order, b.Name)
	}
	b = b.clone()
	b.ProvisionedBytes = addSat(b.ProvisionedBytes, s.inFlight[b.Name])
	s.backends[b.Name] = b
}

// Settle marks a placement's create as finished: its bytes are now part of
// what a refresh reports, and stay charged until then.
func (s *State) Settle(name string, bytes uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inFlight[name] = subSat(s.inFlight[name], bytes)
}

// Abandon undoes a Pick whose create failed.
func (s *State) Abandon(name string, bytes uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inFlight[name] = subSat(s.inFlight[name], bytes)
	if b, ok := s.backends[name]; ok {
		b.ProvisionedBytes = subSat(b.ProvisionedBytes, bytes)
		s.backends[name] = b
	}
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

// Release gives back a deleted volume's bytes. It floors at zero because a
// refresh may already have dropped the volume from the figure.
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
// (placing, then charging, would let two of them pick the same stale
// "most free" backend). The caller Settles the bytes when the create
// succeeds, or Abandons them when it fails.
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
	s.inFlight[best.Backend.Name] = addSat(s.inFlight[best.Backend.Name], req.SizeBytes)
	return best, nil
}

// Grow charges the growth of a volume on backend name by bytes, if the
// capacity filter admits that much there (a volume cannot move while it
// grows), as Pick does for a new volume; "" when charged, else why not. The
// caller Settles the bytes when the growth is done, or Abandons them.
func (s *State) Grow(name string, bytes uint64) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.backends[name]
	if !ok {
		return "backend is unknown"
	}
	if why := rejectDown(&b, nil, filterOpts{}); why != "" {
		return why
	}
	if why := rejectCapacity(&b, &Request{SizeBytes: bytes}, filterOpts{checkSize: true}); why != "" {
		return why
	}
	b.ProvisionedBytes = addSat(b.ProvisionedBytes, bytes)
	s.backends[name] = b
	s.inFlight[name] = addSat(s.inFlight[name], bytes)
	return ""
}
