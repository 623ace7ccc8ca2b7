package ceph

import (
	"context"
	"fmt"
	"time"

	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"

	"github.com/basalt-csi/basalt/pkg/backend"
)

// RBD live migration (rbd migration prepare/execute/commit) moves an image
// to another pool of the same cluster under the same name. After prepare,
// clients open the target and librbd reads what execute has not copied yet
// from the source; commit removes the source. Prepare refuses an image
// that a client has open (EBUSY: "image has watchers"), execute and commit
// do not.

// MigrateTo implements backend.Cluster.
func (c *Conn) MigrateTo(ctx context.Context, image, dstPool string) error {
	if dstPool == c.pool {
		return fmt.Errorf("migrating %s: already in pool %s", image, dstPool)
	}
	return c.inPool(ctx, dstPool, func(s *scope, dst *rados.IOContext) error {
		return translate(c.writing(ctx, s, fmt.Sprintf("preparing the migration of %s/%s to %s", c.pool, image, dstPool), image, func() error {
			opts := imageOptions(false)
			defer opts.Destroy()
			return rbd.MigrationPrepare(c.ioctx, image, dst, image, opts)
		}))
	})
}

// Migration implements backend.Cluster.
func (c *Conn) Migration(ctx context.Context, image string) (string, error) {
	st, err := call(ctx, c.s, fmt.Sprintf("reading the migration state of %s/%s", c.pool, image), func() (*rbd.MigrationImageStatus, error) {
		return rbd.MigrationStatus(c.ioctx, image)
	})
	switch {
	case isErrno(err, 22): // EINVAL: the image is not migrating
		return "", nil
	case err != nil:
		return "", translate(err)
	case st.DestPoolID != int(c.poolID):
		// The name is the source of a migration away from this pool.
		return backend.MigrationSource, nil
	}
	switch st.State {
	case rbd.MigrationImagePrepared:
		return backend.MigrationPrepared, nil
	case rbd.MigrationImageExecuting:
		return backend.MigrationExecuting, nil
	case rbd.MigrationImageExecuted:
		return backend.MigrationExecuted, nil
	}
	return fmt.Sprintf("state %d %s", st.State, st.StateDescription), nil
}

// MigrateExecute implements backend.Cluster. It copies data, so it runs
// under timeout (like a flatten) rather than the per-call deadline; a call
// abandoned at its deadline keeps the image busy until it returns, and the
// next MigrateExecute or MigrateCommit waits for it.
func (c *Conn) MigrateExecute(ctx context.Context, image string, timeout time.Duration) error {
	if err := busy.wait(ctx, c.busyKey(image)); err != nil {
		return err
	}
	s, err := c.s.child()
	if err != nil {
		return err
	}
	defer s.close()
	s.timeout = timeout
	return translate(c.writing(ctx, s, fmt.Sprintf("executing the migration of %s/%s", c.pool, image), image, func() error {
		return rbd.MigrationExecute(c.ioctx, image)
	}))
}

// MigrateCommit implements backend.Cluster.
func (c *Conn) MigrateCommit(ctx context.Context, image string) error {
	if err := busy.wait(ctx, c.busyKey(image)); err != nil {
		return err
	}
	return translate(c.writing(ctx, c.s, fmt.Sprintf("committing the migration of %s/%s", c.pool, image), image, func() error {
		return rbd.MigrationCommit(c.ioctx, image)
	}))
}

// MigrateAbort implements backend.Cluster.
func (c *Conn) MigrateAbort(ctx context.Context, image string) error {
	if err := busy.wait(ctx, c.busyKey(image)); err != nil {
		return err
	}
	return translate(c.writing(ctx, c.s, fmt.Sprintf("aborting the migration of %s/%s", c.pool, image), image, func() error {
		return rbd.MigrationAbort(c.ioctx, image)
	}))
}
