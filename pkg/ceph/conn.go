// Package ceph is the only place Basalt calls go-ceph (librados and librbd).
// A Conn is one backend: a cluster connection and the backend's pool.
//
// librados calls cannot be cancelled, so every call runs on its own
// goroutine and the caller stops waiting at the deadline (the call itself is
// also bounded by rados_osd_op_timeout / rados_mon_op_timeout). A hung
// cluster therefore costs a caller at most one timeout and never holds a
// Basalt lock beyond it. The abandoned call still runs, so the handles it
// uses are freed only after it returns (see scope in scope.go).
package ceph

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"

	"github.com/basalt-csi/basalt/pkg/backend"
	"github.com/basalt-csi/basalt/pkg/config"
)

// Conn implements backend.Cluster on a live cluster.
type Conn struct {
	name   string
	conn   *rados.Conn
	ioctx  *rados.IOContext
	pool   string
	fsid   string
	poolID int64
	mons   string
	addrs  string
	s      *scope // owns conn and ioctx: see scope
}

var _ backend.Cluster = (*Conn)(nil)

func (c *Conn) do(ctx context.Context, what string, f func() error) error {
	return do(ctx, c.s, what, f)
}

// Connect opens backend b. cephx credentials come from b.User and b.Keyring.
func Connect(ctx context.Context, b config.Backend, timeout time.Duration) (*Conn, error) {
	conn, err := rados.NewConnWithUser(b.User)
	if err != nil {
		return nil, fmt.Errorf("backend %q: %w", b.Name, err)
	}
	c := &Conn{name: b.Name, conn: conn, pool: b.Pool, s: newScope(timeout)}
	// Shutdown runs last, after the IOContext registered below. Closing a
	// connection whose connect is stuck can hang, hence "go c.Close()".
	c.s.onFree(conn.Shutdown)
	if err := conn.ReadConfigFile(b.CephConf); err != nil {
		c.Close()
		return nil, fmt.Errorf("backend %q: reading %s: %w", b.Name, b.CephConf, err)
	}
	secs := strconv.Itoa(int(timeout.Seconds()))
	for k, v := range map[string]string{
		"keyring":              b.Keyring,
		"rados_osd_op_timeout": secs,
		"rados_mon_op_timeout": secs,
		"client_mount_timeout": secs,
		"log_to_stderr":        "false",
		"err_to_stderr":        "false",
	} {
		if err := conn.SetConfigOption(k, v); err != nil {
			c.Close()
			return nil, fmt.Errorf("backend %q: setting %s: %w", b.Name, k, err)
		}
	}
	if err := c.do(ctx, "connecting to "+b.CephConf+" as client."+b.User, conn.Connect); err != nil {
		go c.Close()
		return nil, fmt.Errorf("backend %q: %w", b.Name, err)
	}
	fsid, err := call(ctx, c.s, "reading fsid", conn.GetFSID)
	if err != nil {
		go c.Close()
		return nil, fmt.Errorf("backend %q: %w", b.Name, err)
	}
	ioctx, err := call(ctx, c.s, "opening pool "+b.Pool, func() (*rados.IOContext, error) {
		ioctx, err := conn.OpenIOContext(b.Pool)
		if err == nil {
			c.s.onFree(ioctx.Destroy)
		}
		return ioctx, err
	})
	if err != nil {
		go c.Close()
		return nil, fmt.Errorf("backend %q: pool %q: %w", b.Name, b.Pool, err)
	}
	c.fsid, c.ioctx, c.poolID = fsid, ioctx, ioctx.GetPoolID()
	c.mons, _ = conn.GetConfigOption("mon_host")
	c.addrs, _ = conn.GetAddrs()
	return c, nil
}

// ClusterID is the cluster's fsid.
func (c *Conn) ClusterID() string { return c.fsid }

// Monitors is the cluster's mon_host setting.
func (c *Conn) Monitors() string { return c.mons }

// ClientAddrs implements backend.Cluster.
func (c *Conn) ClientAddrs() string { return c.addrs }

// Blocklist implements backend.Cluster: "ceph osd blocklist add" for each
// address (rados_getaddrs prints "[v2:ip:port/nonce,v1:ip:port/nonce]" or
// one bare address; the entries differ only in protocol).
func (c *Conn) Blocklist(ctx context.Context, addrs string) error {
	for _, a := range backend.ClientAddrList(addrs) {
		cmd, err := json.Marshal(map[string]string{"prefix": "osd blocklist", "blocklistop": "add", "addr": a})
		if err != nil {
			return err
		}
		if err := c.do(ctx, "blocklisting "+a, func() error {
			_, status, err := c.conn.MonCommand(cmd)
			if err != nil {
				return fmt.Errorf("%w: %s", err, status)
			}
			return nil
		}); err != nil {
			return err
		}
	}
	return nil
}

// PoolID is the backend pool's ID.
func (c *Conn) PoolID() int64 { return c.poolID }

// Close refuses new calls and releases the connection once the last call
// still running on it (one its caller abandoned at a deadline, say) returns.
// Calls made after Close fail with ErrClosed, which wraps backend.ErrDown.
func (c *Conn) Close() { c.s.close() }

// Stats reads the pool's capacity the way Cinder's RBD driver reports it:
// free = the pool's max_avail, total = what the pool stores plus max_avail.
func (c *Conn) Stats(ctx context.Context) (backend.Stats, error) {
	out, err := call(ctx, c.s, "ceph df", func() ([]byte, error) {
		buf, _, err := c.conn.MonCommand([]byte(`{"prefix":"df","format":"json"}`))
		return buf, err
	})
	if err != nil {
		return backend.Stats{}, err
	}
	var df struct {
		Pools []struct {
			Name  string `json:"name"`
			Stats struct {
				Stored   uint64 `json:"stored"`
				MaxAvail uint64 `json:"max_avail"`
			} `json:"stats"`
		} `json:"pools"`
	}
	if err := json.Unmarshal(out, &df); err != nil {
		return backend.Stats{}, fmt.Errorf("parsing ceph df: %w", err)
	}
	for _, p := range df.Pools {
		if p.Name == c.pool {
			return backend.Stats{TotalBytes: p.Stats.Stored + p.Stats.MaxAvail, FreeBytes: p.Stats.MaxAvail}, nil
		}
	}
	return backend.Stats{}, fmt.Errorf("pool %q is not in ceph df", c.pool)
}

// translate maps go-ceph errors onto backend's sentinel errors.
func translate(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, rbd.ErrNotFound), errors.Is(err, rados.ErrNotFound),
		isErrno(err, 116): // ESTALE: removed concurrently (another controller's delete)
		return fmt.Errorf("%w: %v", backend.ErrNotFound, err)
	case errors.Is(err, rbd.ErrImageIsOpen), isErrno(err, 16): // EBUSY
		return fmt.Errorf("%w: %v", backend.ErrBusy, err)
	case isErrno(err, 39): // ENOTEMPTY
		return fmt.Errorf("%w: %v", backend.ErrHasSnapshots, err)
	case isErrno(err, 110): // ETIMEDOUT: rados_osd_op_timeout or rados_mon_op_timeout fired
		return fmt.Errorf("%w: the cluster did not answer in time: %v", backend.ErrDown, err)
	}
	return err
}

func isErrno(err error, n int) bool {
	// Compound operations wrap the errno in an OperationError without Unwrap.
	var op rados.OperationError
	if errors.As(err, &op) && op.OpError != nil {
		err = op.OpError
	}
	var e interface{ ErrorCode() int }
	return errors.As(err, &e) && (e.ErrorCode() == -n || e.ErrorCode() == n)
}
