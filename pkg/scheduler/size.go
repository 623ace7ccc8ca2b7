package scheduler

import "fmt"

// humanBytes uses binary units with one decimal because that is how
// Kubernetes users size volumes (Gi), and exact byte counts are unreadable.
func humanBytes(n uint64) string {
	const units = "KMGTPE"
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(1024), 0
	for m := n / 1024; m >= 1024 && exp < len(units)-1; m /= 1024 {
		div *= 1024
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), units[exp])
}

// humanPair falls back to exact byte counts when rounding would make two
// different sizes look equal, as in "requested 5.0 GiB > virtual free 5.0 GiB".
func humanPair(a, b uint64) (string, string) {
	ha, hb := humanBytes(a), humanBytes(b)
	if ha == hb && a != b {
		return fmt.Sprintf("%d B", a), fmt.Sprintf("%d B", b)
	}
	return ha, hb
}
