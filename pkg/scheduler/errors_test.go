package scheduler

import "testing"

func TestNoCandidateErrorMessage(t *testing.T) {
	small := func(name string) Backend {
		b := be(name, "zone-a")
		b.TotalBytes, b.FreeBytes = 2*GiB, 2*GiB
		return b
	}
	down := func(name string) Backend { b := be(name, "zone-a"); b.Up = false; return b }
	req := Request{SizeBytes: 10 * GiB, Requisite: []map[string]string{seg("zone-a")}}

	tests := []struct {
		name     string
		backends []Backend
		want     string
		anyDown  bool
	}{
		{"no backends", nil, "no backend can hold a 10.0 GiB volume: no backends are configured", false},
		{"all down", []Backend{down("a"), down("b")}, "no backend can hold a 10.0 GiB volume: all backends are down (a, b)", true},
		{"full, none down", []Backend{small("a")}, "no backend can hold a 10.0 GiB volume: capacity removed a (requested 10.0 GiB > virtual free 2.0 GiB (2.0 GiB at 1x over-subscription, 0 B provisioned))", false},
		{
			"grouped by filter, every backend named",
			[]Backend{small("fast-a"), be("slow-c", "zone-c"), down("old-d"), small("fast-b")},
			"no backend can hold a 10.0 GiB volume: " +
				"up removed old-d (backend is down); " +
				"zone removed slow-c (zone zone-c not in requisite topology); " +
				"capacity removed fast-a (requested 10.0 GiB > virtual free 2.0 GiB (2.0 GiB at 1x over-subscription, 0 B provisioned)), " +
				"fast-b (requested 10.0 GiB > virtual free 2.0 GiB (2.0 GiB at 1x over-subscription, 0 B provisioned))",
			true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Schedule(tt.backends, req)
			nc := noCandidate(t, err)
			if nc.Requested != req.SizeBytes {
				t.Errorf("Requested = %d, want %d", nc.Requested, req.SizeBytes)
			}
			if got := err.Error(); got != tt.want {
				t.Fatalf("Error() =\n  %s\nwant\n  %s", got, tt.want)
			}
			if nc.AnyDown() != tt.anyDown {
				t.Errorf("AnyDown() = %v, want %v (a down backend makes the answer retryable)", nc.AnyDown(), tt.anyDown)
			}
		})
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[uint64]string{
		0:             "0 B",
		1023:          "1023 B",
		1024:          "1.0 KiB",
		3 * GiB / 2:   "1.5 GiB",
		1 << 40:       "1.0 TiB",
		^uint64(0):    "16.0 EiB",
		1<<60 + 1<<59: "1.5 EiB",
	} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}
