package ceph

import (
	"context"
	"fmt"

	"github.com/ceph/go-ceph/rbd"

	"github.com/basalt-csi/basalt/pkg/backend"
)

// copyChunk bounds the memory a cross-cluster copy uses.
const copyChunk = 4 << 20

type extent struct{ off, len uint64 }

// CopyFrom implements backend.Cluster: it creates dst with the source
// snapshot's size and copies only the extents that hold data, chunk by
// chunk, each chunk under its own deadline.
func (c *Conn) CopyFrom(ctx context.Context, from backend.Cluster, spec backend.ImageSpec, dst string) error {
	for {
		u, ok := from.(backend.Unwrapper)
		if !ok {
			break
		}
		from = u.Unwrap()
	}
	src, ok := from.(*Conn)
	if !ok {
		return fmt.Errorf("copy source for %s is not a Ceph connection (%T)", spec, from)
	}
	sioctx, err := src.poolIoctx(ctx, spec.Pool)
	if err != nil {
		return err
	}
	defer src.releaseIoctx(sioctx)

	simg, err := call(ctx, src.timeout, "opening "+spec.String(), func() (*rbd.Image, error) {
		return rbd.OpenImageReadOnly(sioctx, spec.Image, spec.Snap)
	})
	if err != nil {
		return translate(err)
	}
	defer func() { _ = simg.Close() }()
	size, err := call(ctx, src.timeout, "sizing "+spec.String(), simg.GetSize)
	if err != nil {
		return err
	}
	// Extents with data; a thin 1 GiB image with a small filesystem has few.
	var extents []extent
	err = src.do(ctx, "listing allocated extents of "+spec.String(), func() error {
		return simg.DiffIterate(rbd.DiffIterateConfig{
			Offset: 0, Length: size, IncludeParent: rbd.IncludeParent, WholeObject: rbd.EnableWholeObject,
			Callback: func(off, length uint64, exists int, _ interface{}) int {
				if exists == 0 {
					return 0
				}
				if n := len(extents); n > 0 && extents[n-1].off+extents[n-1].len == off {
					extents[n-1].len += length
				} else {
					extents = append(extents, extent{off, length})
				}
				return 0
			},
		})
	})
	if err != nil {
		return err
	}
	if err := c.CreateImage(ctx, dst, size); err != nil {
		return err
	}
	dimg, err := call(ctx, c.timeout, "opening "+dst, func() (*rbd.Image, error) {
		return rbd.OpenImage(c.ioctx, dst, rbd.NoSnapshot)
	})
	if err != nil {
		return translate(err)
	}
	defer func() { _ = dimg.Close() }()

	buf := make([]byte, copyChunk)
	for _, e := range extents {
		for off := e.off; off < e.off+e.len; off += copyChunk {
			n := min(uint64(copyChunk), e.off+e.len-off)
			chunk := buf[:n]
			if err := src.do(ctx, fmt.Sprintf("reading %s at %d", spec, off), func() error {
				_, err := simg.ReadAt(chunk, int64(off))
				return err
			}); err != nil {
				return err
			}
			if isZero(chunk) {
				continue // keep the copy thin
			}
			if err := c.do(ctx, fmt.Sprintf("writing %s at %d", dst, off), func() error {
				_, err := dimg.WriteAt(chunk, int64(off))
				return err
			}); err != nil {
				return err
			}
		}
	}
	return c.do(ctx, "flushing "+dst, dimg.Flush)
}

func isZero(b []byte) bool {
	for _, v := range b {
		if v != 0 {
			return false
		}
	}
	return true
}
