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
