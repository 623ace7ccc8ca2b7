// Package scheduler chooses the backend a new volume is created on.
//
// It follows Cinder's FilterScheduler: filters drop backends that cannot take
// the volume at all, then the survivors are ordered so that the caller can try
// the first and, if the create fails there, reschedule to the next without
// asking again. Everything here is pure computation over reported statistics,
// so that placement decisions can be tested without a Ceph cluster.
package scheduler
