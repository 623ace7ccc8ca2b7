package records

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/basalt-csi/basalt/pkg/access"
)

const (
	// attachPrefix + volume UUID: the volume's attachments, the durable
	// truth, changed only by compare-and-write on the object version.
	attachPrefix = "basalt.attach."
	// nodeAttachIndexOID lists "<node>/<volume ID>" for every attachment, so
	// a node's attach count and a listing of all attachments are one omap read.
	nodeAttachIndexOID = "basalt.node-attachments"
)

// AttachmentRecord is one attachment of a volume to a node.
type AttachmentRecord struct {
	ID       string `json:"id"`
	VolumeID string `json:"volumeID"`
	access.Attachment
	Created time.Time `json:"created"`
}

// Attachments is the set of a volume's attachments with the version it was read at.
type Attachments struct {
	VolumeID string             `json:"volumeID"`
	Items    []AttachmentRecord `json:"attachments"`

	version uint64
	exists  bool
}

// For returns the attachment to node, if any.
func (a *Attachments) For(node string) (AttachmentRecord, bool) {
	for _, r := range a.Items {
		if r.Node == node {
			return r, true
		}
	}
	return AttachmentRecord{}, false
}

// Nodes lists the attached nodes.
func (a *Attachments) Nodes() []string {
	out := make([]string, 0, len(a.Items))
	for _, r := range a.Items {
		out = append(out, r.Node)
	}
	return out
}

// Plain returns the attachments without their record fields.
func (a *Attachments) Plain() []access.Attachment {
	out := make([]access.Attachment, 0, len(a.Items))
	for _, r := range a.Items {
		out = append(out, r.Attachment)
	}
	return out
}

func attachOID(uuid string) string { return attachPrefix + uuid }

// LoadAttachments reads a volume's attachments (none if never attached).
func (g *Registry) LoadAttachments(ctx context.Context, volumeID, uuid string) (*Attachments, error) {
	data, ver, err := g.Store.Get(ctx, attachOID(uuid))
	if errors.Is(err, ErrNotFound) {
		return &Attachments{VolumeID: volumeID}, nil
	}
	if err != nil {
		return nil, err
	}
	a := &Attachments{}
	if err := json.Unmarshal(data, a); err != nil {
		return nil, fmt.Errorf("attachments of %s are corrupt: %w", volumeID, err)
	}
	a.version, a.exists = ver, true
	return a, nil
}

// SaveAttachments writes a back, failing with ErrConflict (or ErrExists) if
// another writer changed them since they were loaded: the caller reloads and
// decides again. An empty set deletes the object.
func (g *Registry) SaveAttachments(ctx context.Context, uuid string, a *Attachments) error {
	oid := attachOID(uuid)
	if len(a.Items) == 0 {
		if !a.exists {
			return nil
		}
		// Delete only the version we read: a concurrent publish wins
		// (ErrConflict), it is never deleted.
		return g.Store.DeleteVersion(ctx, oid, a.version)
	}
	data, err := json.Marshal(a)
	if err != nil {
		return err
	}
	if !a.exists {
		_, err = g.Store.Create(ctx, oid, data)
		return err
	}
	_, err = g.Store.Update(ctx, oid, a.version, data)
	return err
}

// DeleteAttachments drops a deleted volume's (empty) attachment object.
func (g *Registry) DeleteAttachments(ctx context.Context, uuid string) error {
	return g.Store.Delete(ctx, attachOID(uuid))
}

func nodeAttachKey(node, volumeID string) string { return node + "/" + volumeID }

// IndexAttachment records r under its node.
func (g *Registry) IndexAttachment(ctx context.Context, r AttachmentRecord) error {
	return indexPut(ctx, g.Store, nodeAttachIndexOID, nodeAttachKey(r.Node, r.VolumeID), r)
}

// UnindexAttachment drops the node index entry of volumeID on node.
func (g *Registry) UnindexAttachment(ctx context.Context, node, volumeID string) error {
	return g.Store.IndexRemove(ctx, nodeAttachIndexOID, nodeAttachKey(node, volumeID))
}

// NodeAttachments lists attachments from the node index: of one node, or of
// every node when node is "".
func (g *Registry) NodeAttachments(ctx context.Context, node string) ([]AttachmentRecord, error) {
	prefix := ""
	if node != "" {
		prefix = node + "/"
	}
	var out []AttachmentRecord
	after := ""
	for {
		kvs, err := g.Store.IndexList(ctx, nodeAttachIndexOID, after, prefix, 500)
		if err != nil {
			return nil, err
		}
		for _, kv := range kvs {
			var r AttachmentRecord
			if err := json.Unmarshal(kv.Value, &r); err != nil {
				return nil, fmt.Errorf("attachment index entry %s is corrupt: %w", kv.Key, err)
			}
			if node == "" || strings.HasPrefix(kv.Key, prefix) {
				out = append(out, r)
			}
		}
		if len(kvs) < 500 {
			return out, nil
		}
		after = kvs[len(kvs)-1].Key
	}
}
