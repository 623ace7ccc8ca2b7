package ceph

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"

	"github.com/basalt-csi/basalt/pkg/backend"
	"github.com/basalt-csi/basalt/pkg/failpoint"
)

// Features of images Basalt creates: layering only, which every mapper
// (krbd included) supports and which cloning needs.
const imageFeatures = rbd.FeatureLayering

// Clones are format 2 ("clone v2"): their parent snapshot need not be
// protected, and removing a snapshot that still has clones moves it to the
// snapshot trash until the last clone goes, so snapshots and volumes have
// independent lifecycles. Pacific creates them when asked, without raising
// the cluster's require_min_compat_client (checked on a fresh cluster).
const cloneFormat = 2

func imageOptions(clone bool) *rbd.ImageOptions {
	opts := rbd.NewRbdImageOptions()
	_ = opts.SetUint64(rbd.ImageOptionFeatures, imageFeatures)
	if clone { // rbd_create refuses the option (EINVAL)
		_ = opts.SetUint64(rbd.ImageOptionCloneFormat, cloneFormat)
	}
	return opts
}

// inPool runs f with an IOContext on pool (a golden image's pool) and the
// scope that f's calls must use: the backend's own for the backend pool, or
// an operation scope that owns an IOContext opened for f.
func (c *Conn) inPool(ctx context.Context, pool string, f func(s *scope, ioctx *rados.IOContext) error) error {
	if pool == c.pool {
		return f(c.s, c.ioctx)
	}
	s, err := c.s.child()
	if err != nil {
		return err
	}
	defer s.close()
	ioctx, err := call(ctx, s, "opening pool "+pool, func() (*rados.IOContext, error) {
		ioctx, err := c.conn.OpenIOContext(pool)
		if err == nil {
			s.onFree(ioctx.Destroy)
		}
		return ioctx, err
	})
	if err != nil {
		return translate(err)
	}
	return f(s, ioctx)
}

// SnapshotInfo implements backend.Cluster.
func (c *Conn) SnapshotInfo(ctx context.Context, spec backend.ImageSpec) (backend.SnapshotInfo, error) {
	var info backend.SnapshotInfo
	err := c.inPool(ctx, spec.Pool, func(s *scope, ioctx *rados.IOContext) error {
		return do(ctx, s, "inspecting "+spec.String(), func() error {
			img, err := rbd.OpenImageReadOnly(ioctx, spec.Image, spec.Snap)
			if err != nil {
				return translate(err)
			}
			defer img.Close()
			protected, err := img.GetSnapshot(spec.Snap).IsProtected()
			if err != nil {
				return translate(err)
			}
			if !protected {
				return fmt.Errorf("%s: %w (run: rbd snap protect %s)", spec, backend.ErrNotProtected, spec)
			}
			if info.SizeBytes, err = img.GetSize(); err != nil {
				return err
			}
			// The identity of this snapshot, as opposed to another one
			// made later under the same name: its ID and creation time.
			if info.ID, err = img.GetSnapID(spec.Snap); err != nil {
				return translate(err)
			}
			ts, err := img.GetSnapTimestamp(info.ID)
			info.CreatedUnixNano = ts.Sec*1e9 + ts.Nsec
			return err
		})
	})
	if err != nil {
		return backend.SnapshotInfo{}, err // info may still be written by an abandoned call
	}
	return info, nil
}

// Clone implements backend.Cluster.
func (c *Conn) Clone(ctx context.Context, spec backend.ImageSpec, dst string) error {
	if spec.Snap == "" { // librbd aborts the process on an empty snapshot name
		return fmt.Errorf("cannot clone %s: only a named snapshot can be cloned", spec)
	}
	return c.inPool(ctx, spec.Pool, func(s *scope, src *rados.IOContext) error {
		return translate(c.writing(ctx, s, fmt.Sprintf("cloning %s to %s/%s", spec, c.pool, dst), dst, func() error {
			opts := imageOptions(true)
			defer opts.Destroy()
			return rbd.CloneImage(src, spec.Image, spec.Snap, c.ioctx, dst, opts)
		}))
	})
}

// CreateImage implements backend.Cluster.
func (c *Conn) CreateImage(ctx context.Context, name string, size uint64) error {
	return translate(c.writing(ctx, c.s, fmt.Sprintf("creating %s/%s", c.pool, name), name, func() error {
		opts := imageOptions(false)
		defer opts.Destroy()
		return rbd.CreateImage(c.ioctx, name, size, opts)
	}))
}

// withImage opens name in the backend pool for the duration of f.
func (c *Conn) withImage(ctx context.Context, what, name string, readOnly bool, f func(*rbd.Image) error) error {
	return translate(c.do(ctx, fmt.Sprintf("%s %s/%s", what, c.pool, name), func() error {
		var img *rbd.Image
		var err error
		if readOnly {
			img, err = rbd.OpenImageReadOnly(c.ioctx, name, rbd.NoSnapshot)
		} else {
			img, err = rbd.OpenImage(c.ioctx, name, rbd.NoSnapshot)
		}
		if err != nil {
			return err
		}
		defer img.Close()
		return f(img)
	}))
}

// Finish implements backend.Cluster: one read-write open (which costs a
// header read and a watch) serves both the resize and the metadata.
func (c *Conn) Finish(ctx context.Context, name string, size uint64, kv map[string]string) error {
	keys := make([]string, 0, len(kv))
	for k := range kv {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return c.withImage(ctx, "finishing", name, false, func(img *rbd.Image) error {
		if err := failpoint.Hit("ceph/finish-open"); err != nil { // the image is open (watched)
			return err
		}
		cur, err := img.GetSize()
		if err != nil {
			return err
		}
		if cur != size {
			if err := img.Resize(size); err != nil {
				return fmt.Errorf("resizing to %d: %w", size, err)
			}
		}
		if len(keys) == 0 {
			return nil
		}
		// librbd sets one metadata key per round trip; cls_rbd's
		// metadata_set (what it calls) takes the whole map in one.
		id, err := img.GetId()
		if err != nil {
			return err
		}
		op := rados.CreateWriteOp()
		defer op.Release()
		op.Exec("rbd", "metadata_set", encodeStringMap(keys, kv))
		if err := op.Operate(c.ioctx, "rbd_header."+id, rados.OperationNoFlag); err != nil {
			return fmt.Errorf("writing metadata: %w", err)
		}
		return nil
	})
}

// encodeStringMap is Ceph's encoding of a map<string, bufferlist>: a
// little-endian u32 count, then each key and value as u32 length + bytes.
func encodeStringMap(keys []string, kv map[string]string) []byte {
	var b []byte
	put := func(s string) {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(keys)))
	for _, k := range keys {
		put(k)
		put(kv[k])
	}
	return b
}

// ListImages implements backend.Cluster.
func (c *Conn) ListImages(ctx context.Context) ([]string, error) {
	names, err := call(ctx, c.s, "listing the images of "+c.pool, func() ([]string, error) {
		return rbd.GetImageNames(c.ioctx)
	})
	return names, translate(err)
}

// StatImage implements backend.Cluster.
func (c *Conn) StatImage(ctx context.Context, name string) (backend.ImageInfo, error) {
	var info backend.ImageInfo
	err := c.withImage(ctx, "inspecting", name, true, func(img *rbd.Image) error {
		size, err := img.GetSize()
		if err != nil {
			return err
		}
		md, err := img.ListMetadata()
		if err != nil {
			return err
		}
		info = backend.ImageInfo{SizeBytes: size, Metadata: md}
		return nil
	})
	if err != nil {
		return backend.ImageInfo{}, err // info may still be written by an abandoned call
	}
	return info, nil
}

// SetMetadata implements backend.Cluster: one read-write open, so that
// clients with the image open are notified and apply librbd overrides.
func (c *Conn) SetMetadata(ctx context.Context, name string, set map[string]string, remove []string) error {
	keys := make([]string, 0, len(set))
	for k := range set {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return c.withImage(ctx, "setting metadata of", name, false, func(img *rbd.Image) error {
		for _, k := range keys {
			if err := img.SetMetadata(k, set[k]); err != nil {
				return err
			}
		}
		for _, k := range remove {
			if err := img.RemoveMetadata(k); err != nil && !errors.Is(err, rbd.ErrNotFound) {
				return err
			}
		}
		return nil
	})
}

// Usage implements backend.Cluster. The image is opened read-only so that
// Basalt's own open does not count as a watcher.
func (c *Conn) Usage(ctx context.Context, name string) (backend.Usage, error) {
	var u backend.Usage
	err := c.withImage(ctx, "checking users of", name, true, func(img *rbd.Image) error {
		w, err := img.ListWatchers()
		if err != nil {
			return err
		}
		u.Watchers = len(w)
		for _, x := range w {
			u.Clients = append(u.Clients, x.Addr)
		}
		parent, err := img.GetParent()
		if err == nil && !parent.Image.Trash {
			u.ParentImage = parent.Image.ImageName
			if parent.Image.PoolName == c.pool {
				u.Parent = parent.Image.ImageName
			}
		}
		if u.ID, err = img.GetId(); err != nil {
			return err
		}
		snaps, err := img.GetSnapshotNames() // every namespace: user, group, trash
		u.Snapshots = len(snaps)
		return err
	})
	if err != nil {
		return backend.Usage{}, err // u may still be written by an abandoned call
	}
	return u, nil
}

// RemoveImage implements backend.Cluster.
func (c *Conn) RemoveImage(ctx context.Context, name string) error {
	if err := busy.wait(ctx, c.busyKey(name)); err != nil {
		return err
	}
	err := translate(c.do(ctx, fmt.Sprintf("removing %s/%s", c.pool, name), func() error {
		return rbd.RemoveImage(c.ioctx, name)
	}))
	if err != nil && isNotFound(err) {
		return nil
	}
	return err
}

// TrashImage implements backend.Cluster.
func (c *Conn) TrashImage(ctx context.Context, name string) error {
	if err := busy.wait(ctx, c.busyKey(name)); err != nil {
		return err
	}
	err := translate(c.do(ctx, fmt.Sprintf("moving %s/%s to the trash", c.pool, name), func() error {
		return rbd.GetImage(c.ioctx, name).Trash(0)
	}))
	if err != nil && isNotFound(err) {
		return nil
	}
	return err
}

// TrashEntries implements backend.Cluster.
func (c *Conn) TrashEntries(ctx context.Context) ([]backend.TrashEntry, error) {
	list, err := call(ctx, c.s, "listing the trash of "+c.pool, func() ([]rbd.TrashInfo, error) {
		return rbd.GetTrashList(c.ioctx)
	})
	if err != nil {
		return nil, translate(err)
	}
	out := make([]backend.TrashEntry, 0, len(list))
	for _, t := range list {
		out = append(out, backend.TrashEntry{ID: t.Id, Name: t.Name, Trashed: t.DeletionTime})
	}
	return out, nil
}

// PurgeTrash implements backend.Cluster.
func (c *Conn) PurgeTrash(ctx context.Context, id string, timeout time.Duration) error {
	key := c.fsid + "/trash/" + id
	if busy.running(key) {
		return nil // a purge abandoned at its deadline still runs
	}
	s, err := c.s.child()
	if err != nil {
		return err
	}
	defer s.close()
	s.timeout = timeout
	err = translate(c.writing(ctx, s, fmt.Sprintf("purging %s from the trash of %s", id, c.pool), "trash/"+id, func() error {
		return rbd.TrashRemove(c.ioctx, id, false)
	}))
	if err != nil && isNotFound(err) {
		return nil
	}
	return err
}
