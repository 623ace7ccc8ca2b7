// Package backend holds the configured backends: their connections, whether
// they are up, and their capacity as the scheduler sees it. It is the
// analogue of Cinder's per-backend volume services and their periodic
// capacity reports. It does not import go-ceph: connections come from a
// Connector (pkg/ceph in production, a fault-injecting wrapper in tests).
package backend

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/basalt-csi/basalt/pkg/records"
)

// Errors a Cluster returns (wrapped).
var (
	ErrNotFound     = errors.New("not found")
	ErrNotProtected = errors.New("snapshot is not protected")
	ErrBusy         = errors.New("image is in use")
	// ErrHasSnapshots: the image cannot be removed while it has snapshots.
	ErrHasSnapshots = errors.New("image has snapshots")
	// ErrSnapshotLimit: the image has as many snapshots as allowed.
	ErrSnapshotLimit = errors.New("snapshot limit reached")
)

// ImageSpec names a golden image's snapshot: pool/name@snap. For the member
// snapshot of a group snapshot, GroupSnap is "group@snap" instead of Snap
// (it has no name of its own: it is found by its group namespace).
type ImageSpec struct{ Pool, Image, Snap, GroupSnap string }

func (s ImageSpec) String() string {
	if s.GroupSnap != "" {
		return s.Pool + "/" + s.Image + " in group snapshot " + s.GroupSnap
	}
	return s.Pool + "/" + s.Image + "@" + s.Snap
}

// ParseImageSpec parses pool/name@snap; every part is required, because only
// a protected snapshot can be cloned and an image head changes under us.
func ParseImageSpec(v string) (ImageSpec, error) {
	pool, rest, ok := strings.Cut(v, "/")
	if !ok {
		return ImageSpec{}, fmt.Errorf("image %q must be pool/name@snap", v)
	}
	name, snap, ok := strings.Cut(rest, "@")
	if !ok || pool == "" || name == "" || snap == "" || strings.ContainsAny(name+snap, "/@") {
		return ImageSpec{}, fmt.Errorf("image %q must be pool/name@snap", v)
	}
	return ImageSpec{Pool: pool, Image: name, Snap: snap}, nil
}

// SnapshotInfo describes a golden image's snapshot: its size, and what tells
// it from another snapshot later made under the same name (its ID and
// creation time), which is how image-cache entries are invalidated.
type SnapshotInfo struct {
	SizeBytes       uint64
	ID              uint64
	CreatedUnixNano int64
}

// Fingerprint identifies this snapshot of this cluster (fsid) for as long as
// it exists; a snapshot replaced under the same name has another one.
func (s SnapshotInfo) Fingerprint(fsid string) string {
	return fmt.Sprintf("%s/%d/%d/%d", fsid, s.ID, s.CreatedUnixNano, s.SizeBytes)
}

// Stats is a backend pool's physical capacity.
type Stats struct {
	TotalBytes uint64
	FreeBytes  uint64
}

// ImageInfo describes one image.
type ImageInfo struct {
	SizeBytes uint64
	Metadata  map[string]string
}

// Usage tells whether an image may be removed. Clones of its snapshots do
// not prevent it: the image is then set aside (see provision.Delete).
type Usage struct {
	Watchers int      // clients with the image open (mapped)
	Clients  []string // their addresses, as `ceph osd blocklist` takes them
	Parent   string   // the parent image, if a clone of one in the same pool
	// ParentImage is the parent image's name in whatever pool ("" when
	// the image is not a clone).
	ParentImage string
	// ID is the image's RBD ID (its ID in the trash once trashed).
	ID string
	// Snapshots counts the image's snapshots of every kind (its own, group
	// members', and those in the snapshot trash waiting for clones).
	Snapshots int
}

// TrashEntry is an image in a pool's RBD trash.
type TrashEntry struct {
	ID      string // what PurgeTrash takes
	Name    string // the image's name before it was trashed
	Trashed time.Time
}

// Cluster is everything Basalt does on one backend: its Ceph cluster and pool.
// Every method honours ctx and has its own deadline besides.
type Cluster interface {
	records.Store

	ClusterID() string // fsid as Ceph prints it
	PoolID() int64
	Monitors() string // mon_host of the cluster, for the node plugin
	// ClientAddrs is this connection's client address(es) as Ceph sees
	// them (rados_getaddrs), the handle to blocklist it by.
	ClientAddrs() string
	// Blocklist fences the Ceph client at addrs (as ClientAddrs printed
	// them): its watches go at once, its writes are refused.
	Blocklist(ctx context.Context, addrs string) error
	Stats(ctx context.Context) (Stats, error)

	// SnapshotInfo describes spec's snapshot in this cluster; ErrNotFound
	// when the pool, image or snapshot is absent; ErrNotProtected.
	SnapshotInfo(ctx context.Context, spec ImageSpec) (SnapshotInfo, error)
	// Clone makes dst (in the backend pool) a COW clone of spec.
	Clone(ctx context.Context, spec ImageSpec, dst string) error
	// CopyFrom copies spec from another cluster into dst, sparsely.
	CopyFrom(ctx context.Context, src Cluster, spec ImageSpec, dst string) error
	CreateImage(ctx context.Context, name string, size uint64) error
	// Finish resizes a new image to size and writes its metadata, opening it once.
	Finish(ctx context.Context, name string, size uint64, kv map[string]string) error
	StatImage(ctx context.Context, name string) (ImageInfo, error)
	// ListImages lists the images of the backend pool.
	ListImages(ctx context.Context) ([]string, error)
	Usage(ctx context.Context, name string) (Usage, error)
	// RemoveImage deletes the image; absent is success; ErrBusy if open;
	// ErrHasSnapshots while it has snapshots (those in Ceph's snapshot
	// trash, which wait for their last clone, included).
	RemoveImage(ctx context.Context, name string) error
	// TrashImage moves an image without snapshots to the pool's RBD trash,
	// in constant time whatever its size; absent is success.
	TrashImage(ctx context.Context, name string) error
	// TrashEntries lists the pool's RBD trash.
	TrashEntries(ctx context.Context) ([]TrashEntry, error)
	// PurgeTrash removes trash entry id and its data, under timeout (the
	// time is proportional to the image's size). A purge of id already
	// running in this process is not started again: it returns nil.
	PurgeTrash(ctx context.Context, id string, timeout time.Duration) error
	// RenameImage renames an image in the backend pool; clones keep their
	// parent (they refer to it by ID).
	RenameImage(ctx context.Context, from, to string) error

	// CreateSnapshot takes snapshot snap of image and returns the image's
	// size at that point and its metadata; an existing snap is success.
	// ErrSnapshotLimit when the image already has limit snapshots (0 = no limit).
	CreateSnapshot(ctx context.Context, image, snap string, limit int) (ImageInfo, error)
	// RemoveSnapshot removes snap of image; absent is success.
	RemoveSnapshot(ctx context.Context, image, snap string) error
	// SetMetadata sets and removes image metadata keys (removing an absent
	// key is success).
	SetMetadata(ctx context.Context, image string, set map[string]string, remove []string) error
	// ListSnapshots names image's snapshots (not those of groups or in
	// Ceph's snapshot trash).
	ListSnapshots(ctx context.Context, image string) ([]string, error)
	// CloneDepth is the number of parents above image (0 = not a clone).
	CloneDepth(ctx context.Context, image string) (int, error)
	// Flatten copies the parent's data into image and detaches it.
	// GroupSnapshot takes one RBD group snapshot group@snap (the group in
	// the backend pool) of images (Pool and Image, in any pool of this
	// cluster) and returns each image's size in it, by Pool/Image;
	// idempotent.
	GroupSnapshot(ctx context.Context, group string, images []ImageSpec, snap string) (map[string]uint64, error)
	// RemoveGroupSnapshot removes group@snap, its members' snapshots and the
	// group; absent is success.
	RemoveGroupSnapshot(ctx context.Context, group, snap string) error
	// Flatten copies the parent's data into image and detaches it; it may
	// run up to timeout (longer than the Ceph timeout: it copies data).
	Flatten(ctx context.Context, image string, timeout time.Duration) error

	// Live migration to another pool of the same cluster (retype), under
	// the same image name: MigrateTo (on the source backend) prepares it,
	// refusing with ErrBusy while a client has the image open; afterwards
	// clients use the target, and the rest runs on the target backend.
	MigrateTo(ctx context.Context, image, dstPool string) error
	// Migration is image's migration state in this pool: "" when it is not
	// migrating, a Migration* constant, or a description of another state;
	// ErrNotFound when absent.
	Migration(ctx context.Context, image string) (string, error)
	// MigrateExecute copies the data (under timeout, like Flatten);
	// MigrateCommit removes the source; MigrateAbort returns to it.
	MigrateExecute(ctx context.Context, image string, timeout time.Duration) error
	MigrateCommit(ctx context.Context, image string) error
	MigrateAbort(ctx context.Context, image string) error
	Close()
}

// Migration states (Cluster.Migration).
const (
	MigrationPrepared  = "prepared"
	MigrationExecuting = "executing"
	MigrationExecuted  = "executed"
	// MigrationSource: the name in this pool is the source of a migration
	// to another pool.
	MigrationSource = "source"
)

// Unwrapper is implemented by wrappers (fault injectors) around a Cluster so
// that CopyFrom can reach the concrete source.
type Unwrapper interface{ Unwrap() Cluster }

// ClientAddrList splits a client address vector as librados prints it
// ("[v2:IP:port/nonce,v1:IP:port/nonce]", or one "IP:port/nonce") into the
// bare addresses `ceph osd blocklist` takes, each once.
func ClientAddrList(addrs string) []string {
	var out []string
	seen := map[string]bool{}
	for _, a := range strings.Split(strings.Trim(addrs, "[]"), ",") {
		a = strings.TrimPrefix(strings.TrimPrefix(strings.TrimSpace(a), "v2:"), "v1:")
		if a != "" && !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out
}
