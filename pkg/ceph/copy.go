package ceph

import (
	"context"
	"fmt"
	"strings"

	"github.com/ceph/go-ceph/rados"
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
	// The images stay open across many calls, so they belong to operation
	// scopes: a read or write abandoned at its deadline keeps its image (and
	// connection) open until it returns.
	return src.inPool(ctx, spec.Pool, func(ss *scope, sioctx *rados.IOContext) error {
		ds, err := c.s.child()
		if err != nil {
			return err
		}
		defer ds.close()
		// dst is being written until its scope is freed: after the last
		// write (even one abandoned at its deadline) and the image's close.
		ds.onFree(busy.start(c.busyKey(dst)))
		if ss == src.s { // the source's own pool: still give its image a scope
			if ss, err = src.s.child(); err != nil {
				return err
			}
			defer ss.close()
		}
		return c.copyImage(ctx, ss, sioctx, spec, ds, dst)
	})
}

func (c *Conn) copyImage(ctx context.Context, ss *scope, sioctx *rados.IOContext, spec backend.ImageSpec, ds *scope, dst string) error {
	simg, err := call(ctx, ss, "opening "+spec.String(), func() (*rbd.Image, error) {
		img, err := rbd.OpenImageReadOnly(sioctx, spec.Image, spec.Snap)
		if err != nil {
			return nil, err
		}
		ss.onFree(func() { _ = img.Close() })
		if spec.GroupSnap == "" {
			return img, nil
		}
		// A group snapshot's member has no user-visible name: find its ID.
		group, snap, _ := strings.Cut(spec.GroupSnap, "@")
		id, _, err := findGroupSnap(img, group, snap)
		if err == nil && id == nil {
			err = fmt.Errorf("%w: no member snapshot of %s", backend.ErrNotFound, spec)
		}
		if err != nil {
			return nil, err
		}
		return img, img.SetSnapByID(*id)
	})
	if err != nil {
		return translate(err)
	}
	size, err := call(ctx, ss, "sizing "+spec.String(), simg.GetSize)
	if err != nil {
		return err
	}
	// Extents with data; a thin 1 GiB image with a small filesystem has few.
	extents, err := call(ctx, ss, "listing allocated extents of "+spec.String(), func() ([]extent, error) {
		var extents []extent
		err := simg.DiffIterate(rbd.DiffIterateConfig{
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
		return extents, err
	})
	if err != nil {
		return err
	}
	if err := c.CreateImage(ctx, dst, size); err != nil {
		return err
	}
	dimg, err := call(ctx, ds, "opening "+dst, func() (*rbd.Image, error) {
		img, err := rbd.OpenImage(c.ioctx, dst, rbd.NoSnapshot)
		if err == nil {
			ds.onFree(func() { _ = img.Close() })
		}
		return img, err
	})
	if err != nil {
		return translate(err)
	}
	for _, e := range extents {
		for off := e.off; off < e.off+e.len; off += copyChunk {
			n := min(uint64(copyChunk), e.off+e.len-off)
			// A fresh buffer per chunk: an abandoned read may still fill
			// the previous one. Memory stays bounded by one chunk per call
			// still running.
			chunk, err := call(ctx, ss, fmt.Sprintf("reading %s at %d", spec, off), func() ([]byte, error) {
				chunk := make([]byte, n)
				_, err := simg.ReadAt(chunk, int64(off))
				return chunk, err
			})
			if err != nil {
				return err
			}
			if isZero(chunk) {
				continue // keep the copy thin
			}
			if err := do(ctx, ds, fmt.Sprintf("writing %s at %d", dst, off), func() error {
				_, err := dimg.WriteAt(chunk, int64(off))
				return err
			}); err != nil {
				return err
			}
		}
	}
	return do(ctx, ds, "flushing "+dst, dimg.Flush)
}

func isZero(b []byte) bool {
	for _, v := range b {
		if v != 0 {
			return false
		}
	}
	return true
}
