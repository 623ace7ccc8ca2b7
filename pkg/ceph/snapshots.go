package ceph

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"

	"github.com/basalt-csi/basalt/pkg/backend"
)

// CreateSnapshot implements backend.Cluster. Counting and creating happen in
// one open of the image; an existing snapshot of that name is success.
func (c *Conn) CreateSnapshot(ctx context.Context, image, snap string, limit int) (backend.ImageInfo, error) {
	var info backend.ImageInfo
	err := c.withImage(ctx, "snapshotting", image, false, func(img *rbd.Image) error {
		md, err := img.ListMetadata()
		if err != nil {
			return err
		}
		snaps, err := img.GetSnapshotNames()
		if err != nil {
			return err
		}
		for _, s := range snaps {
			if s.Name == snap {
				info = backend.ImageInfo{SizeBytes: s.Size, Metadata: md}
				return nil
			}
		}
		if limit > 0 && len(snaps) >= limit {
			return fmt.Errorf("%w: the image has %d snapshots, the configured maximum is %d", backend.ErrSnapshotLimit, len(snaps), limit)
		}
		size, err := img.GetSize()
		if err != nil {
			return err
		}
		info = backend.ImageInfo{SizeBytes: size, Metadata: md}
		_, err = img.CreateSnapshot(snap)
		return err
	})
	if err != nil {
		return backend.ImageInfo{}, err // info may still be written by an abandoned call
	}
	return info, nil
}

// RemoveSnapshot implements backend.Cluster. A snapshot with (format 2)
// clones moves to Ceph's snapshot trash and goes with its last clone.
func (c *Conn) RemoveSnapshot(ctx context.Context, image, snap string) error {
	err := c.withImage(ctx, "removing snapshot "+snap+" of", image, false, func(img *rbd.Image) error {
		return img.GetSnapshot(snap).Remove()
	})
	if isNotFound(err) {
		return nil
	}
	return err
}

// ListSnapshots implements backend.Cluster.
func (c *Conn) ListSnapshots(ctx context.Context, image string) ([]string, error) {
	names, err := call(ctx, c.s, fmt.Sprintf("listing the snapshots of %s/%s", c.pool, image), func() ([]string, error) {
		img, err := rbd.OpenImageReadOnly(c.ioctx, image, rbd.NoSnapshot)
		if err != nil {
			return nil, err
		}
		defer img.Close()
		snaps, err := img.GetSnapshotNames()
		names := make([]string, 0, len(snaps))
		for _, s := range snaps {
			names = append(names, s.Name)
		}
		return names, err
	})
	return names, translate(err)
}

// RenameImage implements backend.Cluster.
func (c *Conn) RenameImage(ctx context.Context, from, to string) error {
	return translate(c.do(ctx, fmt.Sprintf("renaming %s/%s to %s", c.pool, from, to), func() error {
		img := rbd.GetImage(c.ioctx, from)
		return img.Rename(to)
	}))
}

// CloneDepth implements backend.Cluster: the number of parents above image.
func (c *Conn) CloneDepth(ctx context.Context, image string) (int, error) {
	return call(ctx, c.s, fmt.Sprintf("measuring the clone depth of %s/%s", c.pool, image), func() (int, error) {
		depth := 0
		pool, ioctx := c.pool, c.ioctx
		var open func() (*rbd.Image, error) = func() (*rbd.Image, error) {
			return rbd.OpenImageReadOnly(ioctx, image, rbd.NoSnapshot)
		}
		for ; depth <= maxChain; depth++ {
			img, err := open()
			if err != nil {
				return 0, translate(err)
			}
			parent, err := img.GetParent()
			img.Close()
			if isErrno(err, 2) || errors.Is(err, rbd.ErrNotFound) {
				return depth, nil // no parent: the top of the chain
			}
			if err != nil {
				return 0, err
			}
			if parent.Image.PoolName != pool {
				if ioctx != c.ioctx {
					ioctx.Destroy()
				}
				if ioctx, err = c.conn.OpenIOContext(parent.Image.PoolName); err != nil {
					return 0, err
				}
				pool = parent.Image.PoolName
				defer func(i *rados.IOContext) { i.Destroy() }(ioctx)
			}
			spec, i := parent.Image, ioctx
			open = func() (*rbd.Image, error) {
				if spec.Trash { // a parent in the RBD trash has no name lookup
					return rbd.OpenImageByIdReadOnly(i, spec.ImageID, rbd.NoSnapshot)
				}
				return rbd.OpenImageReadOnly(i, spec.ImageName, rbd.NoSnapshot)
			}
		}
		return 0, fmt.Errorf("the clone chain of %s is longer than %d", image, maxChain)
	})
}

// maxChain bounds the walk up a clone chain; krbd maps at most 16 levels.
const maxChain = 64

// Flatten implements backend.Cluster. It copies the parent's data into the
// image; librbd does it online, so a mapped image keeps serving I/O.
func (c *Conn) Flatten(ctx context.Context, image string, timeout time.Duration) error {
	s, err := c.s.child()
	if err != nil {
		return err
	}
	defer s.close()
	s.timeout = timeout
	err = translate(do(ctx, s, fmt.Sprintf("flattening %s/%s", c.pool, image), func() error {
		img, err := rbd.OpenImage(c.ioctx, image, rbd.NoSnapshot)
		if err != nil {
			return err
		}
		defer img.Close()
		return img.Flatten()
	}))
	if isErrno(err, 22) { // EINVAL: the image has no parent (already flat)
		return nil
	}
	return err
}
