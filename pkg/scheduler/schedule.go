package scheduler

// Schedule returns candidates best first, or a *NoCandidateError if none
// survive. It returns the whole ordered list rather than one winner so that
// a failed create can be rescheduled without re-reading statistics.
func Schedule(backends []Backend, req Request) ([]Candidate, error) {
	kept, rejected := runFilters(backends, &req, filterOpts{checkSize: true})
	if len(kept) == 0 {
		return nil, &NoCandidateError{Requested: req.SizeBytes, Rejections: rejected}
	}
	return order(kept, &req), nil
}
