package scheduler

import (
	"slices"
	"testing"
)

func withFree(name, zone, cluster string, provisionedGiB uint64) Backend {
	b := be(name, zone)
	b.ClusterID = cluster
	b.ProvisionedBytes = provisionedGiB * GiB
	return b
}

func TestOrdering(t *testing.T) {
	tests := []struct {
		name      string
		backends  []Backend
		req       Request
		want      []string
		wantLocal []bool
	}{
		{
			name: "weight: most virtual free first, ties by name",
			backends: []Backend{
				withFree("d", "z", "c1", 50),
				withFree("c", "z", "c1", 10),
				withFree("b", "z", "c1", 90),
				withFree("a", "z", "c1", 50),
			},
			want:      []string{"c", "a", "d", "b"},
			wantLocal: []bool{true, true, true, true},
		},
		{
			name: "locality beats weight",
			backends: []Backend{
				withFree("copy-big", "z", "c1", 0),
				withFree("clone-small", "z", "c2", 90),
				withFree("clone-mid", "z", "c3", 50),
			},
			req:       Request{ImageClusters: map[string]bool{"c2": true, "c3": true}},
			want:      []string{"clone-mid", "clone-small", "copy-big"},
			wantLocal: []bool{true, true, false},
		},
		{
			name: "preferred rank beats locality beats weight",
			backends: []Backend{
				withFree("c-huge-local", "zone-c", "c2", 0),
				withFree("a-big-copy", "zone-a", "c1", 10),
				withFree("a-small-local", "zone-a", "c2", 90),
				withFree("b-tiny-copy", "zone-b", "c1", 95),
				withFree("c-mid-local", "zone-c", "c2", 50),
			},
			req: Request{
				Preferred:     []map[string]string{seg("zone-b"), seg("zone-a")},
				ImageClusters: map[string]bool{"c2": true},
			},
			want:      []string{"b-tiny-copy", "a-small-local", "a-big-copy", "c-huge-local", "c-mid-local"},
			wantLocal: []bool{false, true, false, true, true},
		},
		{
			name: "preferred segment with foreign keys ranks nothing",
			backends: []Backend{
				withFree("a", "zone-a", "c1", 50),
				withFree("b", "zone-b", "c1", 0),
			},
			req:       Request{Preferred: []map[string]string{{TopologyKey: "zone-a", "other": "x"}}},
			want:      []string{"b", "a"},
			wantLocal: []bool{true, true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Schedule(tt.backends, tt.req)
			wantOrder(t, got, err, tt.want...)
			var local []bool
			for _, c := range got {
				local = append(local, c.Local)
			}
			if !slices.Equal(local, tt.wantLocal) {
				t.Fatalf("Local = %v, want %v", local, tt.wantLocal)
			}
		})
	}
}

func TestReservedPercentage(t *testing.T) {
	b := be("a", "z")
	b.ReservedPercentage = 10 // 10 GiB of 100
	b.ProvisionedBytes = 30 * GiB

	b.FreeBytes = 10 * GiB
	if _, err := Schedule([]Backend{b}, Request{SizeBytes: GiB}); err == nil {
		t.Fatal("free exactly at the reserve was accepted")
	}
	b.FreeBytes = 10*GiB + 1
	got, err := Schedule([]Backend{b}, Request{SizeBytes: GiB})
	wantOrder(t, got, err, "a")
	// Weight: 100 total - 30 provisioned - 10 reserved.
	if got[0].VirtualFree != 60*GiB {
		t.Fatalf("VirtualFree = %d, want %d", got[0].VirtualFree, uint64(60*GiB))
	}
	// Out-of-range percentages are clamped rather than trusted.
	b.ReservedPercentage = 250
	b.FreeBytes = 100 * GiB
	if _, err := Schedule([]Backend{b}, Request{}); err == nil {
		t.Fatal("reserve clamped to 100% should leave no physical room")
	}
}

func TestOverSubscription(t *testing.T) {
	tests := []struct {
		name              string
		totalGiB, provGiB uint64
		ratio             float64
		reserved          int
		size              uint64
		ok                bool
		wantFree          uint64
		reasonHas         string
	}{
		{"room is total*ratio-provisioned", 10, 15, 2, 0, 5 * GiB, true, 5 * GiB, ""},
		{"one byte over", 10, 15, 2, 0, 5*GiB + 1, false, 0, "requested 5368709121 B > virtual free 5368709120 B"},
		{"human sizes in reason", 10, 15, 2, 0, 6 * GiB, false, 0, "requested 6.0 GiB > virtual free 5.0 GiB (10.0 GiB at 2x over-subscription, 15.0 GiB provisioned)"},
		{"fractional ratio", 10, 0, 1.5, 0, 15 * GiB, true, 15 * GiB, ""},
		{"weight also removes reserve", 10, 15, 2, 10, 4 * GiB, true, 4 * GiB, ""},
		{"over-provisioned clamps at zero", 10, 25, 2, 0, 1, false, 0, "virtual free 0 B"},
		{"unset ratio acts as 1", 10, 0, 0, 0, 10*GiB + 1, false, 0, "at 1x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := be("a", "z")
			b.TotalBytes, b.FreeBytes = tt.totalGiB*GiB, tt.totalGiB*GiB
			b.ProvisionedBytes, b.MaxOverSubscriptionRatio, b.ReservedPercentage = tt.provGiB*GiB, tt.ratio, tt.reserved
			got, err := Schedule([]Backend{b}, Request{SizeBytes: tt.size})
			if !tt.ok {
				rej := noCandidate(t, err).Rejections
				checkRejections(t, rej, map[string]wantRej{"a": {FilterCapacity, []string{tt.reasonHas}}})
				return
			}
			wantOrder(t, got, err, "a")
			if got[0].VirtualFree != tt.wantFree {
				t.Fatalf("VirtualFree = %d, want %d", got[0].VirtualFree, tt.wantFree)
			}
		})
	}
}

func TestHugeNumbersDoNotOverflow(t *testing.T) {
	const max = ^uint64(0)
	b := Backend{Name: "big", Up: true, TotalBytes: max, FreeBytes: max, MaxOverSubscriptionRatio: 1e300, ReservedPercentage: 99}
	if got := b.virtualTotal(); got != max {
		t.Fatalf("virtualTotal = %d, want saturation at %d", got, max)
	}
	b.ReservedPercentage = 100
	if got := b.reservedBytes(); got != max {
		t.Fatalf("reservedBytes at 100%% = %d, want %d", got, max)
	}
	b.ReservedPercentage = 0
	avail, maxVol := Capacity([]Backend{b, b}, Request{})
	if avail != max || maxVol != max {
		t.Fatalf("Capacity = %d, %d; want saturation", avail, maxVol)
	}
}
