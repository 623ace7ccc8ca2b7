package scheduler

import (
	"cmp"
	"slices"
	"strings"
)

// Candidate is one surviving backend, in the order the caller should try them.
type Candidate struct {
	Backend     Backend
	Local       bool   // can clone: its cluster holds the image, or there is no image
	VirtualFree uint64 // the weight: total*ratio - provisioned - reserved, clamped at 0
}

// order ranks survivors by what matters most to the user first: the
// workload's preferred zone, then avoiding a slow cross-cluster image copy,
// and only then spreading by free capacity. The name tie-break keeps the
// order reproducible, so retries and tests see the same sequence.
func order(backends []Backend, req *Request) []Candidate {
	type ranked struct {
		c    Candidate
		pref int
	}
	rs := make([]ranked, len(backends))
	for i := range backends {
		b := &backends[i]
		rs[i] = ranked{
			c:    Candidate{Backend: *b, Local: req.local(b), VirtualFree: b.virtualFree()},
			pref: req.preferredRank(b.Zone),
		}
	}
	slices.SortStableFunc(rs, func(x, y ranked) int {
		if c := cmp.Compare(x.pref, y.pref); c != 0 {
			return c
		}
		if x.c.Local != y.c.Local {
			if x.c.Local {
				return -1
			}
			return 1
		}
		if c := cmp.Compare(y.c.VirtualFree, x.c.VirtualFree); c != 0 {
			return c
		}
		return strings.Compare(x.c.Backend.Name, y.c.Backend.Name)
	})
	out := make([]Candidate, len(rs))
	for i := range rs {
		out[i] = rs[i].c
	}
	return out
}
