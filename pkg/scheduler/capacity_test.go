package scheduler

import "testing"

func TestCapacity(t *testing.T) {
	mk := func(name, zone string, provGiB uint64, f func(*Backend)) Backend {
		b := be(name, zone)
		b.ProvisionedBytes = provGiB * GiB
		if f != nil {
			f(&b)
		}
		return b
	}
	backends := []Backend{
		mk("a", "zone-a", 60, nil), // 40 free
		mk("b", "zone-a", 10, func(b *Backend) { b.ReservedPercentage = 10 }), // 100-10-10 = 80
		mk("c", "zone-a", 0, func(b *Backend) { b.Up = false }),
		mk("d", "zone-b", 0, nil),
		mk("e", "zone-a", 0, func(b *Backend) { b.ReservedPercentage, b.FreeBytes = 50, 50*GiB }), // physically at reserve
		mk("g", "zone-a", 0, func(b *Backend) { b.Capabilities = map[string]string{"tier": "slow"} }),
		mk("f", "zone-a", 120, nil), // over-provisioned: survives with 0 free; last, so MaxVolume must be a real max
	}
	inA := []map[string]string{seg("zone-a")}
	tests := []struct {
		name          string
		req           Request
		avail, maxVol uint64
	}{
		{"zone-a", Request{Requisite: inA}, 220 * GiB, 100 * GiB},
		{"size is ignored", Request{Requisite: inA, SizeBytes: 1 << 60}, 220 * GiB, 100 * GiB},
		{"capabilities", Request{Requisite: inA, Capabilities: map[string]string{"tier": "slow"}}, 100 * GiB, 100 * GiB},
		{"pinned", Request{Backend: "b"}, 80 * GiB, 80 * GiB},
		{"no topology", Request{}, 320 * GiB, 100 * GiB},
		{"none survive", Request{Requisite: []map[string]string{seg("zone-x")}}, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			avail, maxVol := Capacity(backends, tt.req)
			if avail != tt.avail || maxVol != tt.maxVol {
				t.Fatalf("Capacity = %d GiB, %d GiB; want %d GiB, %d GiB",
					avail/GiB, maxVol/GiB, tt.avail/GiB, tt.maxVol/GiB)
			}
			if maxVol == 0 {
				return
			}
			// What GetCapacity promises, Schedule must grant.
			req := tt.req
			req.SizeBytes = maxVol
			if _, err := Schedule(backends, req); err != nil {
				t.Fatalf("Schedule of MaxVolume refused: %v", err)
			}
		})
	}
}
