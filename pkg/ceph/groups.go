package ceph

import (
	"context"
	"fmt"

	"github.com/basalt-csi/basalt/pkg/backend"
	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"
)

// GroupSnapshot implements backend.Cluster with an RBD group snapshot:
// librbd quiesces every member, then snapshots them all, so the member
// snapshots are one point in time across the volumes, whichever pool of the
// cluster each is in (the group lives in this backend's pool). The members
// leave the group right after (an image belongs to one group at a time, and
// a volume may be in many group snapshots); the group keeps the snapshot
// record, and removing the group snapshot still removes every member's
// snapshot. Idempotent: a group snapshot that exists already is reused.
func (c *Conn) GroupSnapshot(ctx context.Context, group string, images []backend.ImageSpec, snap string) (map[string]uint64, error) {
	sizes, err := call(ctx, c.s, fmt.Sprintf("group snapshot %s/%s@%s of %v", c.pool, group, snap, images), func() (map[string]uint64, error) {
		// The other pools' IOContexts are this call's own: made and
		// destroyed here, so an abandoned call leaves none behind in use.
		ioctxs := map[string]*rados.IOContext{c.pool: c.ioctx}
		defer func() {
			for pool, ioctx := range ioctxs {
				if pool != c.pool {
					ioctx.Destroy()
				}
			}
		}()
		ioctxOf := func(pool string) (*rados.IOContext, error) {
			if ioctx, ok := ioctxs[pool]; ok {
				return ioctx, nil
			}
			ioctx, err := c.conn.OpenIOContext(pool)
			if err != nil {
				return nil, fmt.Errorf("opening pool %s: %w", pool, err)
			}
			ioctxs[pool] = ioctx
			return ioctx, nil
		}
		for _, img := range images {
			if _, err := ioctxOf(img.Pool); err != nil {
				return nil, err
			}
		}
		if err := rbd.GroupCreate(c.ioctx, group); err != nil && !isErrno(err, 17) { // EEXIST
			return nil, err
		}
		snaps, err := rbd.GroupSnapList(c.ioctx, group)
		if err != nil {
			return nil, err
		}
		taken := false
		for _, s := range snaps {
			taken = taken || s.Name == snap
		}
		if !taken {
			for _, img := range images {
				if err := rbd.GroupImageAdd(c.ioctx, group, ioctxs[img.Pool], img.Image); err != nil && !isErrno(err, 17) {
					return nil, fmt.Errorf("adding %s/%s to the group: %w", img.Pool, img.Image, translate(err))
				}
			}
			if err := rbd.GroupSnapCreate(c.ioctx, group, snap); err != nil {
				return nil, err
			}
		}
		for _, img := range images {
			if err := rbd.GroupImageRemove(c.ioctx, group, ioctxs[img.Pool], img.Image); err != nil && !isErrno(err, 2) {
				return nil, fmt.Errorf("taking %s/%s out of the group: %w", img.Pool, img.Image, err)
			}
		}
		sizes := map[string]uint64{}
		for _, img := range images {
			id, size, err := groupSnapOf(ioctxs[img.Pool], img.Image, group, snap)
			if err != nil {
				return nil, err
			}
			if id == nil {
				return nil, fmt.Errorf("%s/%s has no snapshot of group snapshot %s@%s", img.Pool, img.Image, group, snap)
			}
			sizes[img.Pool+"/"+img.Image] = size
		}
		return sizes, nil
	})
	if err != nil {
		return nil, translate(err)
	}
	return sizes, nil
}

// groupSnapOf finds image's member snapshot of group@snap (nil if none).
func groupSnapOf(ioctx *rados.IOContext, image, group, snap string) (*uint64, uint64, error) {
	img, err := rbd.OpenImageReadOnly(ioctx, image, rbd.NoSnapshot)
	if err != nil {
		return nil, 0, translate(err)
	}
	defer img.Close()
	return findGroupSnap(img, group, snap)
}

// findGroupSnap looks through every snapshot of img (rbd_snap_list lists all
// namespaces) for the one group snapshot group@snap made.
func findGroupSnap(img *rbd.Image, group, snap string) (*uint64, uint64, error) {
	snaps, err := img.GetSnapshotNames()
	if err != nil {
		return nil, 0, err
	}
	for _, s := range snaps {
		ns, err := img.GetSnapGroupNamespace(s.Id)
		if err != nil {
			continue // not a group snapshot
		}
		if ns.GroupName == group && ns.GroupSnapName == snap {
			id := s.Id
			return &id, s.Size, nil
		}
	}
	return nil, 0, nil
}

// RemoveGroupSnapshot implements backend.Cluster: the group snapshot (with
// every member's snapshot) and the group. Absent is success.
func (c *Conn) RemoveGroupSnapshot(ctx context.Context, group, snap string) error {
	err := c.do(ctx, fmt.Sprintf("removing group snapshot %s/%s@%s", c.pool, group, snap), func() error {
		if err := rbd.GroupSnapRemove(c.ioctx, group, snap); err != nil && !isErrno(err, 2) {
			return err
		}
		if err := rbd.GroupRemove(c.ioctx, group); err != nil && !isErrno(err, 2) {
			return err
		}
		return nil
	})
	return translate(err)
}
