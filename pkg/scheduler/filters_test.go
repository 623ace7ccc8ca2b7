package scheduler

import (
	"slices"
	"strings"
	"testing"
)

type wantRej struct {
	filter string
	reason []string // substrings the reason must contain
}

func with(b Backend, f func(*Backend)) Backend { f(&b); return b }

func TestFilters(t *testing.T) {
	a, b, c := be("a", "zone-a"), be("b", "zone-b"), be("c", "zone-c")
	tests := []struct {
		name     string
		backends []Backend
		req      Request
		want     []string // survivors, in order
		rejected map[string]wantRej
	}{
		{
			name:     "up",
			backends: []Backend{a, with(b, func(b *Backend) { b.Up = false })},
			want:     []string{"a"},
			rejected: map[string]wantRej{"b": {FilterUp, []string{"down"}}},
		},
		{
			name:     "backend pin",
			backends: []Backend{a, b, c},
			req:      Request{Backend: "b"},
			want:     []string{"b"},
			rejected: map[string]wantRej{
				"a": {FilterBackend, []string{"pinned to backend b"}},
				"c": {FilterBackend, []string{"pinned to backend b"}},
			},
		},
		{
			name:     "zone requisite",
			backends: []Backend{a, b, c},
			req:      Request{Requisite: []map[string]string{seg("zone-a"), seg("zone-b")}},
			want:     []string{"a", "b"},
			rejected: map[string]wantRej{"c": {FilterZone, []string{"zone zone-c not in requisite topology"}}},
		},
		{
			name:     "requisite segment with unknown extra key cannot be satisfied",
			backends: []Backend{a, b},
			req: Request{Requisite: []map[string]string{
				{TopologyKey: "zone-a", "kubernetes.io/hostname": "node-1"},
				seg("zone-b"),
			}},
			want:     []string{"b"},
			rejected: map[string]wantRej{"a": {FilterZone, []string{"zone zone-a not in requisite"}}},
		},
		{
			name:     "requisite with only foreign keys removes everything",
			backends: []Backend{a},
			req:      Request{Requisite: []map[string]string{{"topology.kubernetes.io/zone": "zone-a"}}},
			rejected: map[string]wantRej{"a": {FilterZone, []string{"zone-a"}}},
		},
		{
			name:     "preferred does not filter",
			backends: []Backend{a, b, c},
			req:      Request{Preferred: []map[string]string{seg("zone-c"), seg("zone-x")}},
			want:     []string{"c", "a", "b"},
		},
		{
			name: "capabilities",
			backends: []Backend{
				with(a, func(b *Backend) { b.Capabilities = map[string]string{"tier": "fast", "enc": "yes"} }),
				with(b, func(b *Backend) { b.Capabilities = map[string]string{"tier": "slow", "enc": "yes"} }),
				c,
			},
			req:  Request{Capabilities: map[string]string{"tier": "fast", "enc": "yes"}},
			want: []string{"a"},
			rejected: map[string]wantRej{
				"b": {FilterCapabilities, []string{`capability "tier" is "slow", want "fast"`}},
				"c": {FilterCapabilities, []string{`capability "enc" missing, want "yes"`}},
			},
		},
		{
			name:     "capacity: unknown statistics",
			backends: []Backend{a, with(b, func(b *Backend) { b.TotalBytes, b.FreeBytes = 0, 0 })},
			want:     []string{"a"},
			rejected: map[string]wantRej{"b": {FilterCapacity, []string{"unknown"}}},
		},
		{
			name: "capacity: physical free within reserve",
			backends: []Backend{a, with(b, func(b *Backend) {
				b.ReservedPercentage, b.FreeBytes = 10, 10*GiB
			})},
			req:      Request{SizeBytes: GiB},
			want:     []string{"a"},
			rejected: map[string]wantRej{"b": {FilterCapacity, []string{"physical free 10.0 GiB is within reserved 10%"}}},
		},
		{
			name: "capacity: physically full pool with no reserve",
			backends: []Backend{a, with(b, func(b *Backend) {
				b.FreeBytes, b.MaxOverSubscriptionRatio = 0, 20
			})},
			want:     []string{"a"},
			rejected: map[string]wantRej{"b": {FilterCapacity, []string{"physical free 0 B is within reserved 0%"}}},
		},
		{
			name: "capacity: virtual room",
			backends: []Backend{a, with(b, func(b *Backend) {
				b.TotalBytes, b.FreeBytes, b.ProvisionedBytes = 10*GiB, 10*GiB, 8*GiB
			})},
			req:      Request{SizeBytes: 3 * GiB},
			want:     []string{"a"},
			rejected: map[string]wantRej{"b": {FilterCapacity, []string{"requested 3.0 GiB > virtual free 2.0 GiB"}}},
		},
		{
			name:     "image found nowhere",
			backends: []Backend{a, b},
			req:      Request{ImageClusters: map[string]bool{}},
			rejected: map[string]wantRej{
				"a": {FilterImage, []string{"image not found in any reachable cluster"}},
				"b": {FilterImage, []string{"image not found in any reachable cluster"}},
			},
		},
		{
			name:     "image elsewhere may be copied",
			backends: []Backend{a, b},
			req:      Request{ImageClusters: map[string]bool{"other": true}},
			want:     []string{"a", "b"},
		},
		{
			name:     "earliest filter takes the blame",
			backends: []Backend{with(a, func(b *Backend) { b.Up, b.TotalBytes = false, 0 })},
			req:      Request{Backend: "z", ImageClusters: map[string]bool{}},
			rejected: map[string]wantRej{"a": {FilterUp, []string{"down"}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Schedule(tt.backends, tt.req)
			if len(tt.want) > 0 {
				wantOrder(t, got, err, tt.want...)
				if len(tt.rejected) != 0 {
					// Rejections are only visible through the error; re-check
					// them via the shared filter pipeline.
					_, rej := runFilters(tt.backends, &tt.req, filterOpts{checkSize: true})
					checkRejections(t, rej, tt.rejected)
				}
				return
			}
			if got != nil {
				t.Fatalf("candidates = %v, want none", names(got))
			}
			checkRejections(t, noCandidate(t, err).Rejections, tt.rejected)
		})
	}
}

func checkRejections(t *testing.T, rej []Rejection, want map[string]wantRej) {
	t.Helper()
	if len(rej) != len(want) {
		t.Fatalf("rejections = %+v, want %d of them", rej, len(want))
	}
	for _, r := range rej {
		w, ok := want[r.Backend]
		if !ok {
			t.Fatalf("unexpected rejection %+v", r)
		}
		if r.Filter != w.filter {
			t.Errorf("%s removed by %q, want %q (%s)", r.Backend, r.Filter, w.filter, r.Reason)
		}
		for _, s := range w.reason {
			if !strings.Contains(r.Reason, s) {
				t.Errorf("%s reason %q does not contain %q", r.Backend, r.Reason, s)
			}
		}
	}
}

func TestRejectionsGroupedInPipelineOrder(t *testing.T) {
	bs := []Backend{
		with(be("a", "zone-a"), func(b *Backend) { b.TotalBytes = 0 }),
		be("b", "zone-b"),
		with(be("c", "zone-a"), func(b *Backend) { b.Up = false }),
	}
	_, rej := runFilters(bs, &Request{Requisite: []map[string]string{seg("zone-a")}}, filterOpts{checkSize: true})
	var got []string
	for _, r := range rej {
		got = append(got, r.Filter+":"+r.Backend)
	}
	if want := []string{"up:c", "zone:b", "capacity:a"}; !slices.Equal(got, want) {
		t.Fatalf("rejections = %v, want %v", got, want)
	}
}

func TestSatisfies(t *testing.T) {
	b := Backend{Name: "a", Capabilities: map[string]string{"tier": "fast"}}
	for _, c := range []struct {
		req  Request
		want bool
	}{
		{Request{}, true},
		{Request{Backend: "a"}, true},
		{Request{Backend: "b"}, false},
		{Request{Capabilities: map[string]string{"tier": "fast"}}, true},
		{Request{Capabilities: map[string]string{"tier": "slow"}}, false},
		{Request{Capabilities: map[string]string{"ssd": "true"}}, false},
		// Zone and size never disqualify the backend a volume is on.
		{Request{SizeBytes: 1 << 60, Requisite: []map[string]string{{TopologyKey: "elsewhere"}}}, true},
	} {
		if got := Satisfies(b, c.req) == ""; got != c.want {
			t.Errorf("Satisfies(%+v) = %q, want ok=%v", c.req, Satisfies(b, c.req), c.want)
		}
	}
}

func TestInfeasible(t *testing.T) {
	for _, c := range []struct {
		filters []string
		want    bool
	}{
		{[]string{FilterCapabilities, FilterZone}, true},
		{[]string{FilterCapabilities, FilterCapacity}, false},
		{[]string{FilterBackend, FilterUp}, false},
	} {
		e := &NoCandidateError{}
		for _, f := range c.filters {
			e.Rejections = append(e.Rejections, Rejection{Backend: "x", Filter: f})
		}
		if got := e.Infeasible(); got != c.want {
			t.Errorf("Infeasible(%v) = %v, want %v", c.filters, got, c.want)
		}
	}
}
