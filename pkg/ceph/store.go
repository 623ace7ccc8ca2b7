package ceph

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/ceph/go-ceph/rados"

	"github.com/basalt-csi/basalt/pkg/backend"
	"github.com/basalt-csi/basalt/pkg/records"
)

// recordsNamespace keeps Basalt's records apart from RBD's own objects.
const recordsNamespace = "basalt"

// firstRead is the buffer a record read starts with: records are small JSON
// documents (an index of names lives in omap, not in a record), so one read
// of this size returns nearly all of them whole. A larger record costs a
// stat and a read of its exact size; none is ever truncated.
const firstRead = 16 << 10

// recordsIoctx opens a private IOContext: GetLastVersion reports the last
// operation of an IOContext, so sharing one between goroutines would mix up
// versions and break compare-and-write.
func (c *Conn) recordsIoctx() (*rados.IOContext, error) {
	ioctx, err := c.conn.OpenIOContext(c.pool)
	if err != nil {
		return nil, err
	}
	ioctx.SetNamespace(recordsNamespace)
	return ioctx, nil
}

// inRecords runs f on a private records IOContext, in one call; f's result
// is returned only when f finished, so an abandoned f writes nothing the
// caller reads.
func inRecords[T any](ctx context.Context, c *Conn, what, oid string, f func(*rados.IOContext) (T, error)) (T, error) {
	v, err := call(ctx, c.s, what+" "+recordsNamespace+"/"+oid, func() (T, error) {
		ioctx, err := c.recordsIoctx()
		if err != nil {
			var zero T
			return zero, err
		}
		defer ioctx.Destroy()
		return f(ioctx)
	})
	switch {
	case err == nil:
		return v, nil
	case errors.Is(err, rados.ErrNotFound), isErrno(err, 2): // ENOENT
		err = fmt.Errorf("%w: %v", records.ErrNotFound, err)
	case errors.Is(err, rados.ErrObjectExists), isErrno(err, 17): // EEXIST
		err = fmt.Errorf("%w: %v", records.ErrExists, err)
	case isErrno(err, 75): // EOVERFLOW: version assertion failed (newer)
		err = fmt.Errorf("%w: %v", records.ErrConflict, err)
	case isErrno(err, 34): // ERANGE: version assertion failed (older)
		err = fmt.Errorf("%w: %v", records.ErrConflict, err)
	default:
		err = translate(err) // ETIMEDOUT and the image errors
	}
	var zero T
	return zero, err
}

type versioned struct {
	data []byte
	ver  uint64
}

// Get implements records.Store.
func (c *Conn) Get(ctx context.Context, oid string) ([]byte, uint64, error) {
	r, err := inRecords(ctx, c, "reading", oid, func(ioctx *rados.IOContext) (versioned, error) {
		size := firstRead
		for {
			buf := make([]byte, size)
			n, err := ioctx.Read(oid, buf, 0)
			if err != nil {
				return versioned{}, err
			}
			if n == 0 {
				// A zero-length object is one being created: treat as absent.
				if _, err := ioctx.Stat(oid); err != nil {
					return versioned{}, err
				}
			}
			if n < len(buf) { // the whole object: the version is this read's
				ver, err := ioctx.GetLastVersion()
				return versioned{buf[:n], ver}, err
			}
			// The buffer was filled: learn the size and read it all, one
			// byte more so that a full read proves the end was reached (an
			// object that grew meanwhile goes round again).
			st, err := ioctx.Stat(oid)
			if err != nil {
				return versioned{}, err
			}
			size = int(st.Size) + 1
		}
	})
	return r.data, r.ver, err
}

// Create implements records.Store.
func (c *Conn) Create(ctx context.Context, oid string, data []byte) (uint64, error) {
	return inRecords(ctx, c, "creating", oid, func(ioctx *rados.IOContext) (uint64, error) {
		op := rados.CreateWriteOp()
		defer op.Release()
		op.Create(rados.CreateExclusive)
		op.WriteFull(data)
		if err := op.Operate(ioctx, oid, rados.OperationNoFlag); err != nil {
			return 0, err
		}
		return ioctx.GetLastVersion()
	})
}

// Update implements records.Store. The version the write produced comes
// from the private IOContext, so no read-back is needed.
func (c *Conn) Update(ctx context.Context, oid string, version uint64, data []byte) (uint64, error) {
	return inRecords(ctx, c, "updating", oid, func(ioctx *rados.IOContext) (uint64, error) {
		op := rados.CreateWriteOp()
		defer op.Release()
		op.AssertVersion(version)
		op.WriteFull(data)
		if err := op.Operate(ioctx, oid, rados.OperationNoFlag); err != nil {
			return 0, err
		}
		return ioctx.GetLastVersion()
	})
}

// inRecordsErr is inRecords for f without a result.
func inRecordsErr(ctx context.Context, c *Conn, what, oid string, f func(*rados.IOContext) error) error {
	_, err := inRecords(ctx, c, what, oid, func(ioctx *rados.IOContext) (struct{}, error) { return struct{}{}, f(ioctx) })
	return err
}

// Delete implements records.Store.
func (c *Conn) Delete(ctx context.Context, oid string) error {
	err := inRecordsErr(ctx, c, "deleting", oid, func(ioctx *rados.IOContext) error { return ioctx.Delete(oid) })
	if errors.Is(err, records.ErrNotFound) {
		return nil
	}
	return err
}

// DeleteVersion implements records.Store: assert-version and remove in one
// compound operation, so a concurrent update is never deleted.
func (c *Conn) DeleteVersion(ctx context.Context, oid string, version uint64) error {
	return inRecordsErr(ctx, c, "deleting", oid, func(ioctx *rados.IOContext) error {
		op := rados.CreateWriteOp()
		defer op.Release()
		op.AssertVersion(version)
		op.Remove()
		return op.Operate(ioctx, oid, rados.OperationNoFlag)
	})
}

// IndexSet implements records.Store.
func (c *Conn) IndexSet(ctx context.Context, oid string, kv map[string][]byte) error {
	return inRecordsErr(ctx, c, "indexing in", oid, func(ioctx *rados.IOContext) error { return ioctx.SetOmap(oid, kv) })
}

// IndexRemove implements records.Store.
func (c *Conn) IndexRemove(ctx context.Context, oid string, keys ...string) error {
	err := inRecordsErr(ctx, c, "unindexing in", oid, func(ioctx *rados.IOContext) error { return ioctx.RmOmapKeys(oid, keys) })
	if errors.Is(err, records.ErrNotFound) {
		return nil
	}
	return err
}

// IndexGet implements records.Store.
func (c *Conn) IndexGet(ctx context.Context, oid string, keys ...string) (map[string][]byte, error) {
	out, err := inRecords(ctx, c, "looking up in", oid, func(ioctx *rados.IOContext) (map[string][]byte, error) {
		out := map[string][]byte{}
		op := rados.CreateReadOp()
		defer op.Release()
		step := op.GetOmapValuesByKeys(keys)
		if err := op.Operate(ioctx, oid, rados.OperationNoFlag); err != nil {
			return nil, err
		}
		for {
			kv, err := step.Next()
			if err != nil {
				return nil, err
			}
			if kv == nil {
				return out, nil
			}
			out[kv.Key] = append([]byte(nil), kv.Value...)
		}
	})
	if errors.Is(err, records.ErrNotFound) {
		return map[string][]byte{}, nil
	}
	return out, err
}

// IndexList implements records.Store.
func (c *Conn) IndexList(ctx context.Context, oid, startAfter, prefix string, max int) ([]records.KV, error) {
	out, err := inRecords(ctx, c, "listing", oid, func(ioctx *rados.IOContext) ([]records.KV, error) {
		m, err := ioctx.GetOmapValues(oid, startAfter, prefix, int64(max))
		if err != nil {
			return nil, err
		}
		out := make([]records.KV, 0, len(m))
		for k, v := range m {
			out = append(out, records.KV{Key: k, Value: v})
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
		return out, nil
	})
	if errors.Is(err, records.ErrNotFound) {
		return nil, nil
	}
	return out, err
}

func isNotFound(err error) bool { return errors.Is(err, backend.ErrNotFound) }
