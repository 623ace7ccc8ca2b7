package scheduler

// Request is what a CreateVolume asks for.
type Request struct {
	SizeBytes    uint64
	Backend      string              // pin to this backend name if non-empty
	Capabilities map[string]string   // each must equal the backend's capability
	Requisite    []map[string]string // CSI accessibility requisite segments; nil/empty = no restriction
	Preferred    []map[string]string // CSI preferred segments, in order

	// ImageClusters is nil when the volume has no source image. Otherwise it
	// is the set of cluster IDs (fsids) whose cluster holds the source image.
	// A backend in such a cluster can clone (local); any other backend must
	// copy, which is allowed only if the set is non-empty.
	ImageClusters map[string]bool
}

// segmentMatches requires the segment to consist of exactly our key: a
// segment that also constrains keys this driver does not publish can never be
// satisfied by any of its volumes, so treating it as a match would place
// volumes where the workload cannot reach them.
func segmentMatches(seg map[string]string, zone string) bool {
	z, ok := seg[TopologyKey]
	return ok && len(seg) == 1 && z == zone
}

// preferredRank is len(Preferred) for a backend no preferred segment names,
// so that unmatched backends sort after every matched one.
func (r *Request) preferredRank(zone string) int {
	for i, seg := range r.Preferred {
		if segmentMatches(seg, zone) {
			return i
		}
	}
	return len(r.Preferred)
}

// local reports whether b can clone the source image rather than copy it;
// with no image there is nothing to copy, so every backend counts as local.
func (r *Request) local(b *Backend) bool {
	return r.ImageClusters == nil || r.ImageClusters[b.ClusterID]
}
