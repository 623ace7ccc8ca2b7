// Package access holds the attach rules of CSI access modes, as pure logic:
// which publishes of one volume may coexist on which nodes. It is Cinder's
// attach checks (the volume's readonly flag, multiattach) in CSI terms.
package access

import (
	"fmt"
	"sort"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// Modes of an attachment.
const (
	RW = "rw"
	RO = "ro"
)

// Attachment is one node's publish of a volume.
type Attachment struct {
	Node       string `json:"node"`
	Mode       string `json:"mode"`       // rw or ro: what the node may do
	ReadOnly   bool   `json:"readonly"`   // the readonly flag the CO asked for
	AccessMode string `json:"accessMode"` // csi.VolumeCapability_AccessMode_Mode name
	Block      bool   `json:"block"`
}

// ModeFor decides rw or ro: read-only when asked, and always for the
// reader-only access modes.
func ModeFor(am csi.VolumeCapability_AccessMode_Mode, readonly bool) string {
	if readonly || am == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY || am == csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY {
		return RO
	}
	return RW
}

func singleNode(am string) bool { return strings.HasPrefix(am, "SINGLE_NODE_") }

// ConflictError names the node whose attachment forbids a publish.
type ConflictError struct {
	Node   string
	Reason string
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("volume is attached to node %s %s", e.Node, e.Reason)
}

// Check returns a *ConflictError if want cannot be added to existing (which
// holds the attachments of other nodes only). Rules:
//   - a SINGLE_NODE_* attachment, existing or wanted, excludes every other node;
//   - two read-write attachments on different nodes need MULTI_NODE_MULTI_WRITER on both
//     (so MULTI_NODE_SINGLE_WRITER is one rw node plus any number of ro nodes);
//   - read-only attachments on any number of nodes are fine otherwise.
func Check(existing []Attachment, want Attachment) error {
	sorted := append([]Attachment(nil), existing...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Node < sorted[j].Node })
	for _, a := range sorted {
		if a.Node == want.Node {
			continue
		}
		switch {
		case singleNode(a.AccessMode):
			return &ConflictError{a.Node, fmt.Sprintf("with single-node access mode %s", a.AccessMode)}
		case singleNode(want.AccessMode):
			return &ConflictError{a.Node, fmt.Sprintf("and access mode %s allows one node only", want.AccessMode)}
		case a.Mode == RW && want.Mode == RW && !(a.AccessMode == multiWriter && want.AccessMode == multiWriter):
			return &ConflictError{a.Node, "read-write, and only one node may write unless both use MULTI_NODE_MULTI_WRITER"}
		}
	}
	return nil
}

var multiWriter = csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER.String()
