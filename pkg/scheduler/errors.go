package scheduler

import (
	"fmt"
	"strings"
)

// NoCandidateError carries every rejection so that the CSI error (and the
// PVC event built from it) tells the user which backend failed which check,
// rather than a bare "no valid backend".
type NoCandidateError struct {
	Requested  uint64
	Rejections []Rejection
}

// AnyDown reports whether a backend that is down was rejected: the request
// might succeed once it is back, so the answer is "unavailable, retry",
// not "exhausted" (which makes Kubernetes reschedule the pod elsewhere).
func (e *NoCandidateError) AnyDown() bool {
	for _, r := range e.Rejections {
		if r.Filter == FilterUp {
			return true
		}
	}
	return false
}

// Filters lists, per rejected backend, the filter that ruled it out.
func (e *NoCandidateError) Filters() []string {
	out := make([]string, len(e.Rejections))
	for i, r := range e.Rejections {
		out[i] = r.Filter
	}
	return out
}

func (e *NoCandidateError) Error() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "no backend can hold a %s volume: ", humanBytes(e.Requested))
	if len(e.Rejections) == 0 {
		sb.WriteString("no backends are configured")
		return sb.String()
	}
	allDown := true
	for _, r := range e.Rejections {
		allDown = allDown && r.Filter == FilterUp
	}
	if allDown {
		sb.WriteString("all backends are down (")
		for i, r := range e.Rejections {
			if i > 0 {
				sb.WriteString(", ")
			}
			sb.WriteString(r.Backend)
		}
		sb.WriteString(")")
		return sb.String()
	}
	// Group by filter in order of first appearance, which is pipeline order
	// for rejections produced by Schedule.
	var filters []string
	byFilter := map[string][]string{}
	for _, r := range e.Rejections {
		if _, seen := byFilter[r.Filter]; !seen {
			filters = append(filters, r.Filter)
		}
		byFilter[r.Filter] = append(byFilter[r.Filter], fmt.Sprintf("%s (%s)", r.Backend, r.Reason))
	}
	for i, f := range filters {
		if i > 0 {
			sb.WriteString("; ")
		}
		fmt.Fprintf(&sb, "%s removed %s", f, strings.Join(byFilter[f], ", "))
	}
	return sb.String()
}
