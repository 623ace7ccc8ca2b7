// Package volumeid encodes and decodes Basalt's self-describing volume IDs.
//
// An ID names the Ceph cluster (fsid), the pool (by ID, so renaming a pool
// does not orphan volumes) and the volume's UUID, from which the RBD image
// name is derived. Nothing in memory is needed to find a volume's image:
//
//	bsl1.<fsid: 32 hex>.<pool id: decimal>.<uuid: 32 hex>   (at most 90 bytes)
package volumeid

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

const prefix = "bsl1"

// ImagePrefix starts the name of every RBD image Basalt creates.
const ImagePrefix = "basalt-"

// ErrNotBasalt is returned for IDs this driver did not create.
var ErrNotBasalt = errors.New("not a Basalt volume ID")

// ID identifies one volume.
type ID struct {
	FSID   string // 32 lowercase hex digits, dashes removed
	PoolID int64
	UUID   string // 32 lowercase hex digits
}

// New returns an ID with a fresh random UUID.
func New(fsid string, poolID int64) (ID, error) {
	f, err := NormalizeFSID(fsid)
	if err != nil {
		return ID{}, err
	}
	return ID{FSID: f, PoolID: poolID, UUID: NewUUID()}, nil
}

// NewUUID returns 32 random hex digits.
func NewUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b[:])
}

// NormalizeFSID turns a Ceph fsid (with dashes) into the 32-hex form used in IDs.
func NormalizeFSID(fsid string) (string, error) {
	f := strings.ToLower(strings.ReplaceAll(fsid, "-", ""))
	if !isHex(f, 32) {
		return "", fmt.Errorf("invalid cluster fsid %q", fsid)
	}
	return f, nil
}

// String encodes the ID.
func (id ID) String() string {
	return fmt.Sprintf("%s.%s.%d.%s", prefix, id.FSID, id.PoolID, id.UUID)
}

// ImageName is the RBD image holding the volume.
func (id ID) ImageName() string { return ImagePrefix + id.UUID }

// Parse decodes s, returning ErrNotBasalt (wrapped) for anything malformed.
func Parse(s string) (ID, error) {
	parts := strings.Split(s, ".")
	if len(parts) != 4 || parts[0] != prefix {
		return ID{}, fmt.Errorf("%w: %q", ErrNotBasalt, s)
	}
	pool, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil || pool < 0 || strconv.FormatInt(pool, 10) != parts[2] {
		return ID{}, fmt.Errorf("%w: bad pool id in %q", ErrNotBasalt, s)
	}
	if !isHex(parts[1], 32) || !isHex(parts[3], 32) {
		return ID{}, fmt.Errorf("%w: bad fsid or uuid in %q", ErrNotBasalt, s)
	}
	return ID{FSID: parts[1], PoolID: pool, UUID: parts[3]}, nil
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Snapshot IDs name the volume's cluster, pool and UUID, then the snapshot's
// own UUID; the RBD snapshot lives on the volume's image:
//
//	bss1.<fsid: 32 hex>.<pool id>.<volume uuid: 32 hex>.<snapshot uuid: 32 hex>   (at most 124 bytes)
//
// Every snapshot of a volume shares the prefix up to the snapshot UUID, so
// listing a volume's snapshots is a prefix scan of an index sorted by ID.
const snapPrefix = "bss1"

// SnapPrefix starts the RBD name of every snapshot Basalt takes for a CSI
// snapshot; ClonePrefix the temporary snapshot behind a volume-to-volume clone.
const (
	SnapPrefix  = "basalt-snap-"
	ClonePrefix = "basalt-clone-"
)

// DeletedPrefix names the image of a deleted volume whose snapshots still
// exist: it is removed when the last of them goes (see provision.Delete).
const DeletedPrefix = "basalt-deleted-"

// CachePrefix names the images of the image-volume cache: copies of golden
// images from other clusters, which volumes clone (not volumes themselves).
const CachePrefix = "basalt-cache-"

// SnapshotID identifies one snapshot of one volume.
type SnapshotID struct {
	Volume ID
	UUID   string // 32 lowercase hex digits
}

// String encodes the ID.
func (s SnapshotID) String() string {
	return fmt.Sprintf("%s.%s.%d.%s.%s", snapPrefix, s.Volume.FSID, s.Volume.PoolID, s.Volume.UUID, s.UUID)
}

// SnapName is the RBD snapshot's name on the volume's image.
func (s SnapshotID) SnapName() string { return SnapPrefix + s.UUID }

// SnapshotPrefixOf is the common prefix of the IDs of volume v's snapshots.
func SnapshotPrefixOf(v ID) string {
	return fmt.Sprintf("%s.%s.%d.%s.", snapPrefix, v.FSID, v.PoolID, v.UUID)
}

// DeletedImageName is the name v's image gets when v is deleted while
// snapshots of it remain.
func (id ID) DeletedImageName() string { return DeletedPrefix + id.UUID }

// ParseSnapshot decodes s, returning ErrNotBasalt (wrapped) for anything malformed.
func ParseSnapshot(s string) (SnapshotID, error) {
	head, snap, ok := strings.Cut(s, ".")
	if !ok || head != snapPrefix {
		return SnapshotID{}, fmt.Errorf("%w: %q is not a snapshot ID", ErrNotBasalt, s)
	}
	i := strings.LastIndexByte(snap, '.')
	if i < 0 || !isHex(snap[i+1:], 32) {
		return SnapshotID{}, fmt.Errorf("%w: bad snapshot uuid in %q", ErrNotBasalt, s)
	}
	v, err := Parse(prefix + "." + snap[:i])
	if err != nil {
		return SnapshotID{}, fmt.Errorf("%w: bad volume part in snapshot ID %q", ErrNotBasalt, s)
	}
	return SnapshotID{Volume: v, UUID: snap[i+1:]}, nil
}

// Group snapshot IDs name the cluster and pool of the RBD group that holds
// the group snapshot, and its UUID:
//
//	bsg1.<fsid: 32 hex>.<pool id>.<uuid: 32 hex>   RBD group basalt-group-<uuid>, snapshot "snap"
//
// Each member snapshot is an ordinary snapshot ID whose snapshot UUID is the
// group's: SnapshotID{Volume: member, UUID: group UUID}.
const groupPrefix = "bsg1"

// GroupSnapName is the name of the one snapshot of a Basalt RBD group.
const GroupSnapName = "snap"

// GroupSnapshotID identifies one volume group snapshot.
type GroupSnapshotID struct {
	FSID   string
	PoolID int64
	UUID   string
}

func (g GroupSnapshotID) String() string {
	return fmt.Sprintf("%s.%s.%d.%s", groupPrefix, g.FSID, g.PoolID, g.UUID)
}

// GroupName is the RBD group holding the group snapshot.
func (g GroupSnapshotID) GroupName() string { return "basalt-group-" + g.UUID }

// ParseGroupSnapshot decodes s, returning ErrNotBasalt (wrapped) for anything malformed.
func ParseGroupSnapshot(s string) (GroupSnapshotID, error) {
	head, rest, ok := strings.Cut(s, ".")
	if !ok || head != groupPrefix {
		return GroupSnapshotID{}, fmt.Errorf("%w: %q is not a group snapshot ID", ErrNotBasalt, s)
	}
	id, err := Parse(prefix + "." + rest)
	if err != nil {
		return GroupSnapshotID{}, fmt.Errorf("%w: bad group snapshot ID %q", ErrNotBasalt, s)
	}
	return GroupSnapshotID(id), nil
}
