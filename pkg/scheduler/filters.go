package scheduler

import (
	"fmt"
	"maps"
	"slices"
)

// Filter names, as they appear in Rejection.Filter, in pipeline order.
const (
	FilterUp           = "up"
	FilterBackend      = "backend"
	FilterZone         = "zone"
	FilterCapabilities = "capabilities"
	FilterCapacity     = "capacity"
	FilterImage        = "image"
)

// Rejection records why one filter removed one backend, so that a failed
// placement can be explained to the user instead of just refused.
type Rejection struct {
	Backend, Filter, Reason string
}

// filterOpts lets GetCapacity reuse the very filters placement uses while
// skipping the one check that depends on a volume size it does not have.
type filterOpts struct {
	checkSize bool
}

// A filter returns the reason b cannot take req, or "" if it can.
type filter struct {
	name   string
	reject func(b *Backend, req *Request, o filterOpts) string
}

// pipeline is ordered cheapest and most fundamental first, so that a backend
// is blamed on the most basic reason it is unusable (a down backend is
// reported as down, not as short of space).
var pipeline = []filter{
	{FilterUp, rejectDown},
	{FilterBackend, rejectUnpinned},
	{FilterZone, rejectZone},
	{FilterCapabilities, rejectCapabilities},
	{FilterCapacity, rejectCapacity},
	{FilterImage, rejectImage},
}

// runFilters keeps the input order of the survivors and records each removed
// backend once, grouped by filter in pipeline order.
func runFilters(backends []Backend, req *Request, o filterOpts) ([]Backend, []Rejection) {
	kept := slices.Clone(backends)
	var rejected []Rejection
	for _, f := range pipeline {
		next := kept[:0]
		for i := range kept {
			if reason := f.reject(&kept[i], req, o); reason != "" {
				rejected = append(rejected, Rejection{Backend: kept[i].Name, Filter: f.name, Reason: reason})
				continue
			}
			next = append(next, kept[i])
		}
		kept = next
	}
	return kept, rejected
}

// ReasonDown is the rejection of a backend that is down.
const ReasonDown = "backend is down"

func rejectDown(b *Backend, _ *Request, _ filterOpts) string {
	if b.Up {
		return ""
	}
	return ReasonDown
}

func rejectUnpinned(b *Backend, req *Request, _ filterOpts) string {
	if req.Backend == "" || req.Backend == b.Name {
		return ""
	}
	return fmt.Sprintf("volume is pinned to backend %s", req.Backend)
}

func rejectZone(b *Backend, req *Request, _ filterOpts) string {
	if len(req.Requisite) == 0 {
		return ""
	}
	for _, seg := range req.Requisite {
		if segmentMatches(seg, b.Zone) {
			return ""
		}
	}
	return fmt.Sprintf("zone %s not in requisite topology", b.Zone)
}

// rejectCapabilities names the first mismatching key in sorted order so the
// reason is deterministic despite map iteration order.
func rejectCapabilities(b *Backend, req *Request, _ filterOpts) string {
	for _, k := range slices.Sorted(maps.Keys(req.Capabilities)) {
		want := req.Capabilities[k]
		have, ok := b.Capabilities[k]
		if !ok {
			return fmt.Sprintf("capability %q missing, want %q", k, want)
		}
		if have != want {
			return fmt.Sprintf("capability %q is %q, want %q", k, have, want)
		}
	}
	return ""
}

// rejectCapacity is Cinder's thin-provisioning CapacityFilter: the physical
// check stops placing on a pool that is really filling up, however much
// over-subscription would allow, and the virtual check bounds how much may be
// promised against the pool.
func rejectCapacity(b *Backend, req *Request, o filterOpts) string {
	if b.TotalBytes == 0 {
		return "capacity statistics unknown (total 0 B)"
	}
	if reserved := b.reservedBytes(); b.FreeBytes <= reserved {
		return fmt.Sprintf("physical free %s is within reserved %d%% (%s)",
			humanBytes(b.FreeBytes), min(max(b.ReservedPercentage, 0), 100), humanBytes(reserved))
	}
	if !o.checkSize {
		return ""
	}
	if room := b.virtualRoom(); req.SizeBytes > room {
		want, have := humanPair(req.SizeBytes, room)
		return fmt.Sprintf("requested %s > virtual free %s (%s at %gx over-subscription, %s provisioned)",
			want, have, humanBytes(b.TotalBytes), b.overSubscription(), humanBytes(b.ProvisionedBytes))
	}
	return ""
}

// rejectImage refuses every backend when the source image exists nowhere:
// neither cloning nor copying is possible, and creating an empty volume
// instead would silently lose the user's data source.
func rejectImage(_ *Backend, req *Request, _ filterOpts) string {
	if req.ImageClusters != nil && len(req.ImageClusters) == 0 {
		return "image not found in any reachable cluster"
	}
	return ""
}

// Satisfies tells whether b, where a volume already is, meets req's pin and
// capabilities (a retype's new parameters): "" if it does, else why not.
// Zone, capacity and the image do not apply to a volume that is placed.
func Satisfies(b Backend, req Request) string {
	for _, f := range []func(*Backend, *Request, filterOpts) string{rejectUnpinned, rejectCapabilities} {
		if why := f(&b, &req, filterOpts{}); why != "" {
			return why
		}
	}
	return ""
}

// Infeasible tells whether no backend could ever take the request as it
// stands (every rejection is of the kind a retry cannot change: pin, zone,
// capabilities), as opposed to one that is down or full now.
func (e *NoCandidateError) Infeasible() bool {
	for _, r := range e.Rejections {
		if r.Filter == FilterUp || r.Filter == FilterCapacity {
			return false
		}
	}
	return true
}
