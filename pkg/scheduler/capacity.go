package scheduler

// Capacity answers CSI GetCapacity with what the scheduler would allow, so
// that Kubernetes' storage-capacity tracking never promises space that
// Schedule would then refuse. It applies every filter except the virtual size
// check (there is no volume size yet); pass the GetCapacity topology as
// req.Requisite. Available is the sum of the survivors' virtual free space;
// MaxVolume is the largest single one, because a volume cannot span
// backends. Both are zero when no backend survives.
func Capacity(backends []Backend, req Request) (available, maxVolume uint64) {
	kept, _ := runFilters(backends, &req, filterOpts{checkSize: false})
	for i := range kept {
		free := kept[i].virtualFree()
		available = addSat(available, free)
		maxVolume = max(maxVolume, free)
	}
	return available, maxVolume
}
