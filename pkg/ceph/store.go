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

// maxRecord bounds a record object; records are small JSON documents.
const maxRecord = 1 << 20

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

func (c *Conn) withRecords(ctx context.Context, what, oid string, f func(*rados.IOContext) error) error {
	err := c.do(ctx, what+" "+recordsNamespace+"/"+oid, func() error {
		ioctx, err := c.recordsIoctx()
		if err != nil {
			return err
		}
		defer ioctx.Destroy()
		return f(ioctx)
	})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, rados.ErrNotFound), isErrno(err, 2): // ENOENT
		return fmt.Errorf("%w: %v", records.ErrNotFound, err)
	case errors.Is(err, rados.ErrObjectExists), isErrno(err, 17): // EEXIST
		return fmt.Errorf("%w: %v", records.ErrExists, err)
	case isErrno(err, 75): // EOVERFLOW: version assertion failed (newer)
		return fmt.Errorf("%w: %v", records.ErrConflict, err)
	case isErrno(err, 34): // ERANGE: version assertion failed (older)
		return fmt.Errorf("%w: %v", records.ErrConflict, err)
	}
	return err
}

// Get implements records.Store.
func (c *Conn) Get(ctx context.Context, oid string) ([]byte, uint64, error) {
	var data []byte
	var ver uint64
	err := c.withRecords(ctx, "reading", oid, func(ioctx *rados.IOContext) error {
		buf := make([]byte, maxRecord)
		n, err := ioctx.Read(oid, buf, 0)
		if err != nil {
			return err
		}
		if n == 0 {
			// A zero-length object is one being created: treat as absent.
			if _, err := ioctx.Stat(oid); err != nil {
				return err
			}
		}
		data = buf[:n]
		ver, err = ioctx.GetLastVersion()
		return err
	})
	return data, ver, err
}

// Create implements records.Store.
func (c *Conn) Create(ctx context.Context, oid string, data []byte) (uint64, error) {
	var ver uint64
	err := c.withRecords(ctx, "creating", oid, func(ioctx *rados.IOContext) error {
		op := rados.CreateWriteOp()
		defer op.Release()
		op.Create(rados.CreateExclusive)
		op.WriteFull(data)
		if err := op.Operate(ioctx, oid, rados.OperationNoFlag); err != nil {
			return err
		}
		var err error
		ver, err = ioctx.GetLastVersion()
		return err
	})
	return ver, err
}

// Update implements records.Store. The version the write produced comes
// from the private IOContext, so no read-back is needed.
func (c *Conn) Update(ctx context.Context, oid string, version uint64, data []byte) (uint64, error) {
	var ver uint64
	err := c.withRecords(ctx, "updating", oid, func(ioctx *rados.IOContext) error {
		op := rados.CreateWriteOp()
		defer op.Release()
		op.AssertVersion(version)
		op.WriteFull(data)
		if err := op.Operate(ioctx, oid, rados.OperationNoFlag); err != nil {
			return err
		}
		var err error
		ver, err = ioctx.GetLastVersion()
		return err
	})
	return ver, err
}

// Delete implements records.Store.
func (c *Conn) Delete(ctx context.Context, oid string) error {
	err := c.withRecords(ctx, "deleting", oid, func(ioctx *rados.IOContext) error { return ioctx.Delete(oid) })
	if errors.Is(err, records.ErrNotFound) {
		return nil
	}
	return err
}

// IndexSet implements records.Store.
func (c *Conn) IndexSet(ctx context.Context, oid string, kv map[string][]byte) error {
	return c.withRecords(ctx, "indexing in", oid, func(ioctx *rados.IOContext) error { return ioctx.SetOmap(oid, kv) })
}

// IndexRemove implements records.Store.
func (c *Conn) IndexRemove(ctx context.Context, oid string, keys ...string) error {
	err := c.withRecords(ctx, "unindexing in", oid, func(ioctx *rados.IOContext) error { return ioctx.RmOmapKeys(oid, keys) })
	if errors.Is(err, records.ErrNotFound) {
		return nil
	}
	return err
}

// IndexGet implements records.Store.
func (c *Conn) IndexGet(ctx context.Context, oid string, keys ...string) (map[string][]byte, error) {
	out := map[string][]byte{}
	err := c.withRecords(ctx, "looking up in", oid, func(ioctx *rados.IOContext) error {
		op := rados.CreateReadOp()
		defer op.Release()
		step := op.GetOmapValuesByKeys(keys)
		if err := op.Operate(ioctx, oid, rados.OperationNoFlag); err != nil {
			return err
		}
		for {
			kv, err := step.Next()
			if err != nil {
				return err
			}
			if kv == nil {
				return nil
			}
			out[kv.Key] = append([]byte(nil), kv.Value...)
		}
	})
	if errors.Is(err, records.ErrNotFound) {
		return out, nil
	}
	return out, err
}

// IndexList implements records.Store.
func (c *Conn) IndexList(ctx context.Context, oid, startAfter, prefix string, max int) ([]records.KV, error) {
	var out []records.KV
	err := c.withRecords(ctx, "listing", oid, func(ioctx *rados.IOContext) error {
		m, err := ioctx.GetOmapValues(oid, startAfter, prefix, int64(max))
		if err != nil {
			return err
		}
		for k, v := range m {
			out = append(out, records.KV{Key: k, Value: v})
		}
		return nil
	})
	if errors.Is(err, records.ErrNotFound) {
		return nil, nil
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, err
}

func isNotFound(err error) bool { return errors.Is(err, backend.ErrNotFound) }
