package scheduler

import (
	"cmp"
	"errors"
	"fmt"
	"testing"
)

// fuzzBackends decodes 8 bytes per backend. Sizes are shifted by a fuzzed
// amount so that both small and overflow-sized figures are reached.
func fuzzBackends(data []byte) []Backend {
	var bs []Backend
	for i := 0; len(data) >= 8 && i < 12; i, data = i+1, data[8:] {
		flags, shift := data[0], data[1]%64
		b := Backend{
			Name:                     fmt.Sprintf("b%d", i),
			Zone:                     fmt.Sprintf("zone-%d", flags>>1&3),
			ClusterID:                fmt.Sprintf("c%d", flags>>3&3),
			Up:                       flags&1 == 1,
			TotalBytes:               uint64(data[2]) << shift,
			FreeBytes:                uint64(data[3]) << shift,
			ProvisionedBytes:         uint64(data[4]) << shift,
			ReservedPercentage:       int(int8(data[5])),
			MaxOverSubscriptionRatio: float64(data[6]) / 8,
		}
		if flags&0x20 != 0 {
			b.Capabilities = map[string]string{"tier": fmt.Sprint(data[7] % 2)}
		}
		bs = append(bs, b)
	}
	return bs
}

func fuzzRequest(size uint64, pin, requisite, preferred, image uint8) Request {
	req := Request{SizeBytes: size}
	if pin < 16 {
		req.Backend = fmt.Sprintf("b%d", pin)
	}
	for z := range 4 {
		if requisite&(1<<z) != 0 {
			req.Requisite = append(req.Requisite, seg(fmt.Sprintf("zone-%d", z)))
		}
	}
	if requisite&0x10 != 0 {
		req.Requisite = append(req.Requisite, map[string]string{TopologyKey: "zone-0", "x": "y"})
	}
	if requisite&0x20 != 0 {
		req.Capabilities = map[string]string{"tier": "1"}
	}
	for i := 0; i < 3; i, preferred = i+1, preferred>>2 {
		req.Preferred = append(req.Preferred, seg(fmt.Sprintf("zone-%d", preferred&3)))
	}
	switch image % 3 {
	case 1:
		req.ImageClusters = map[string]bool{}
	case 2:
		req.ImageClusters = map[string]bool{}
		for c := range 4 {
			if image&(8<<c) != 0 {
				req.ImageClusters[fmt.Sprintf("c%d", c)] = true
			}
		}
	}
	return req
}

func FuzzSchedule(f *testing.F) {
	f.Add([]byte{0x01, 30, 10, 10, 0, 0, 8, 0, 0x03, 30, 20, 20, 5, 10, 16, 0}, uint64(GiB), uint8(255), uint8(0), uint8(0), uint8(0))
	f.Add([]byte{0x21, 63, 255, 255, 255, 100, 255, 1, 0x3f, 0, 0, 0, 0, 0, 0, 1}, ^uint64(0), uint8(1), uint8(0x3f), uint8(0x1b), uint8(2+8*3))
	f.Add([]byte{}, uint64(0), uint8(0), uint8(0), uint8(0), uint8(1))
	f.Fuzz(func(t *testing.T, data []byte, size uint64, pin, requisite, preferred, image uint8) {
		backends := fuzzBackends(data)
		req := fuzzRequest(size, pin, requisite, preferred, image)
		got, err := Schedule(backends, req)
		if err != nil {
			var nc *NoCandidateError
			if !errors.As(err, &nc) || got != nil {
				t.Fatalf("err = %v (%T), candidates = %v", err, err, names(got))
			}
			if len(nc.Rejections) != len(backends) || err.Error() == "" {
				t.Fatalf("%d rejections for %d backends", len(nc.Rejections), len(backends))
			}
			return
		}
		if len(got) == 0 {
			t.Fatal("no candidates and no error")
		}
		byName := map[string]Backend{}
		for _, b := range backends {
			byName[b.Name] = b
		}
		_, maxVol := Capacity(backends, req)
		seen := map[string]bool{}
		for i, c := range got {
			b, ok := byName[c.Backend.Name]
			if !ok || !b.Up || seen[b.Name] {
				t.Fatalf("candidate %s: known=%v up=%v duplicate=%v", b.Name, ok, b.Up, seen[b.Name])
			}
			seen[b.Name] = true
			if req.Backend != "" && b.Name != req.Backend {
				t.Fatalf("candidate %s ignores pin %s", b.Name, req.Backend)
			}
			if b.TotalBytes == 0 || b.FreeBytes <= b.reservedBytes() || req.SizeBytes > b.virtualRoom() {
				t.Fatalf("candidate %s lacks capacity for %d: %+v", b.Name, req.SizeBytes, b)
			}
			if c.Local != req.local(&b) || c.VirtualFree != b.virtualFree() || c.VirtualFree > maxVol {
				t.Fatalf("candidate %+v inconsistent (maxVolume %d)", c, maxVol)
			}
			if i > 0 && compareCandidates(&req, got[i-1], c) > 0 {
				t.Fatalf("order violated between %s and %s", got[i-1].Backend.Name, c.Backend.Name)
			}
		}
	})
}

// compareCandidates restates the documented order independently of order().
func compareCandidates(req *Request, x, y Candidate) int {
	return cmp.Or(
		cmp.Compare(req.preferredRank(x.Backend.Zone), req.preferredRank(y.Backend.Zone)),
		cmp.Compare(boolRank(x.Local), boolRank(y.Local)),
		cmp.Compare(y.VirtualFree, x.VirtualFree),
		cmp.Compare(x.Backend.Name, y.Backend.Name),
	)
}

func boolRank(local bool) int {
	if local {
		return 0
	}
	return 1
}
