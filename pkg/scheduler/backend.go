package scheduler

import "math"

// TopologyKey is the CSI topology segment key for a backend's zone.
const TopologyKey = "topology.rbd.basalt.dev/zone"

// Backend is the scheduler's view of one backend.
//
// Capacity is reported the way Cinder's thin-provisioning drivers report it:
// physical figures from the pool, plus the sum of provisioned volume sizes,
// because RBD images are thin and physical usage alone says nothing about how
// much has been promised.
type Backend struct {
	Name      string
	Zone      string
	ClusterID string // Ceph fsid of the backend's cluster
	Up        bool

	TotalBytes       uint64 // physical capacity of the pool
	FreeBytes        uint64 // physical free (max_avail)
	ProvisionedBytes uint64 // sum of sizes of volumes placed on it (thin)

	ReservedPercentage       int     // 0..100
	MaxOverSubscriptionRatio float64 // >= 1; values below 1 (including unset) act as 1

	Capabilities map[string]string
}

// reservedBytes is computed without forming TotalBytes*pct, which could
// overflow for very large (or bogus) totals.
func (b *Backend) reservedBytes() uint64 {
	pct := uint64(min(max(b.ReservedPercentage, 0), 100))
	return b.TotalBytes/100*pct + b.TotalBytes%100*pct/100
}

// overSubscription treats unset, NaN and sub-1 ratios as 1 so that a missing
// or broken setting can never shrink, or make meaningless, a backend's room.
func (b *Backend) overSubscription() float64 {
	if r := b.MaxOverSubscriptionRatio; r > 1 {
		return r
	}
	return 1
}

// virtualTotal goes through float64 because ratios are fractional; the
// conversion is clamped since an out-of-range float-to-int conversion is
// implementation-defined in Go.
func (b *Backend) virtualTotal() uint64 {
	r := b.overSubscription()
	if r == 1 || b.TotalBytes == 0 {
		return b.TotalBytes // exact, even above 2^53
	}
	return floatToUint64(float64(b.TotalBytes) * r)
}

// virtualRoom is what the capacity filter admits a request against.
func (b *Backend) virtualRoom() uint64 {
	return subSat(b.virtualTotal(), b.ProvisionedBytes)
}

// virtualFree additionally keeps the reserve out, as Cinder's CapacityWeigher
// does, so that the weight reflects what is comfortably available.
func (b *Backend) virtualFree() uint64 {
	return subSat(b.virtualRoom(), b.reservedBytes())
}

// VirtualFreeBytes is what the capacity weigher sees: the room left under
// the over-subscription ratio, less the reserve (for metrics and reports).
func (b Backend) VirtualFreeBytes() uint64 { return b.virtualFree() }

// MaxOverSubscription is the ratio in effect (1 when unset or below 1).
func (b Backend) MaxOverSubscription() float64 { return b.overSubscription() }

// clone copies the capabilities map so that callers holding a copy cannot
// race with, or corrupt, the scheduler's own view.
func (b Backend) clone() Backend {
	if b.Capabilities != nil {
		caps := make(map[string]string, len(b.Capabilities))
		for k, v := range b.Capabilities {
			caps[k] = v
		}
		b.Capabilities = caps
	}
	return b
}

func floatToUint64(f float64) uint64 {
	switch {
	case !(f > 0): // also NaN
		return 0
	case f >= 0x1p64:
		return math.MaxUint64
	}
	return uint64(f)
}

func subSat(a, b uint64) uint64 {
	if b >= a {
		return 0
	}
	return a - b
}

func addSat(a, b uint64) uint64 {
	if s := a + b; s >= a {
		return s
	}
	return math.MaxUint64
}
