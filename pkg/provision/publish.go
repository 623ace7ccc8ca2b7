package provision

import (
	"context"
	"errors"
	"sort"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/basalt-csi/basalt/pkg/access"
	"github.com/basalt-csi/basalt/pkg/failpoint"
	"github.com/basalt-csi/basalt/pkg/records"
	"github.com/basalt-csi/basalt/pkg/volumeid"
)

// Keys of the publish_context handed to the node plugin. Never secrets: the
// node has its own credentials.
const (
	PubAttachmentID = "attachmentID"
	PubMode         = "mode"
	PubBackend      = "backend"
	PubPool         = "pool"
	PubImage        = "image"
	PubClusterID    = "clusterID"
	PubMonitors     = "monitors"
)

// PublishRequest is a validated ControllerPublishVolume.
type PublishRequest struct {
	VolumeID   string
	NodeID     string
	ReadOnly   bool
	AccessMode csi.VolumeCapability_AccessMode_Mode
	Block      bool
}

// casRetries bounds how often a publish re-reads after losing a race.
const casRetries = 10

// Publish records an attachment of a volume to a node, the way Cinder's
// begin_attach/finish_attach do, enforcing access modes and the node's
// attach limit. It is idempotent.
func (p *Provisioner) Publish(ctx context.Context, req PublishRequest) (map[string]string, error) {
	id, bname, _, err := p.Stat(ctx, req.VolumeID)
	if err != nil {
		return nil, err
	}
	reg, err := p.registry()
	if err != nil {
		return nil, err
	}
	node, err := reg.Node(ctx, req.NodeID)
	if errors.Is(err, records.ErrNotFound) {
		return nil, errorf(NotFound, nil, "node %q is not registered (its node plugin registers it when it starts: basalt-csi nodes lists them)", req.NodeID)
	}
	if err != nil {
		return nil, classify(err, "reading the node registry")
	}
	want := access.Attachment{
		Node: req.NodeID, Mode: access.ModeFor(req.AccessMode, req.ReadOnly), ReadOnly: req.ReadOnly,
		AccessMode: req.AccessMode.String(), Block: req.Block,
	}
	for try := 0; try < casRetries; try++ {
		atts, err := reg.LoadAttachments(ctx, req.VolumeID, id.UUID)
		if err != nil {
			return nil, classify(err, "reading the attachments of "+req.VolumeID)
		}
		if cur, ok := atts.For(req.NodeID); ok {
			if cur.ReadOnly != want.ReadOnly || cur.AccessMode != want.AccessMode || cur.Block != want.Block {
				return nil, errorf(AlreadyExists, nil, "volume %s is already published to node %s with readonly=%v, access mode %s; unpublish it first",
					req.VolumeID, req.NodeID, cur.ReadOnly, cur.AccessMode)
			}
			// Make sure the node index has it (a crash may have left it out).
			if err := reg.IndexAttachment(ctx, cur); err != nil {
				return nil, classify(err, "indexing the attachment")
			}
			return p.publishContext(id, bname, cur), nil
		}
		var ce *access.ConflictError
		if err := access.Check(atts.Plain(), want); errors.As(err, &ce) {
			return nil, errorf(FailedPrecondition, nil, "cannot publish volume %s to node %s: %v", req.VolumeID, req.NodeID, err)
		}
		onNode, err := reg.NodeAttachments(ctx, req.NodeID)
		if err != nil {
			return nil, classify(err, "counting the attachments of node "+req.NodeID)
		}
		if node.MaxVolumes > 0 && int64(countOthers(onNode, req.VolumeID)) >= node.MaxVolumes {
			return nil, errorf(ResourceExhausted, nil, "node %s has reached its attach limit of %d volumes", req.NodeID, node.MaxVolumes)
		}
		rec := records.AttachmentRecord{ID: volumeid.NewUUID()[:16], VolumeID: req.VolumeID, Attachment: want, Created: time.Now().UTC()}
		// Index first: a crash in between leaves an over-count, never an under-count.
		if err := reg.IndexAttachment(ctx, rec); err != nil {
			return nil, classify(err, "indexing the attachment")
		}
		if err := failpoint.Hit("publish/after-index"); err != nil {
			return nil, classify(err, "publishing "+req.VolumeID)
		}
		atts.Items = append(atts.Items, rec)
		err = reg.SaveAttachments(ctx, id.UUID, atts)
		if err == nil {
			p.Log.Info("volume published", "volume", req.VolumeID, "node", req.NodeID, "mode", want.Mode, "accessMode", want.AccessMode, "attachment", rec.ID)
			return p.publishContext(id, bname, rec), nil
		}
		if uerr := reg.UnindexAttachment(context.WithoutCancel(ctx), req.NodeID, req.VolumeID); uerr != nil {
			p.Log.Error("could not drop the index entry of a lost publish", "error", uerr)
		}
		if !lostRace(err) {
			return nil, classify(err, "writing the attachment")
		}
		p.Log.Info("attachments changed concurrently; deciding again", "volume", req.VolumeID, "node", req.NodeID)
	}
	return nil, errorf(Aborted, nil, "attachments of %s keep changing concurrently; retry", req.VolumeID)
}

func lostRace(err error) bool {
	return errors.Is(err, records.ErrConflict) || errors.Is(err, records.ErrExists) || errors.Is(err, records.ErrNotFound)
}

func countOthers(recs []records.AttachmentRecord, volumeID string) int {
	n := 0
	for _, r := range recs {
		if r.VolumeID != volumeID {
			n++
		}
	}
	return n
}

func (p *Provisioner) publishContext(id volumeid.ID, bname string, r records.AttachmentRecord) map[string]string {
	pc := map[string]string{
		PubAttachmentID: r.ID,
		PubMode:         r.Mode,
		PubBackend:      bname,
		PubImage:        id.ImageName(),
		PubClusterID:    id.FSID,
	}
	if cl, b, err := p.Backends.Get(bname); err == nil {
		pc[PubPool] = b.Pool
		pc[PubMonitors] = cl.Monitors()
		if fsid, err := volumeid.NormalizeFSID(cl.ClusterID()); err == nil {
			pc[PubClusterID] = fsid // where the volume is now (a retype may have moved it)
		}
	}
	return pc
}

// Unpublish removes the attachment of a volume to nodeID, or to every node
// when nodeID is "". Unknown volumes, nodes and absent attachments succeed.
func (p *Provisioner) Unpublish(ctx context.Context, volumeID, nodeID string) error {
	id, err := volumeid.Parse(volumeID)
	if err != nil {
		return nil // not a volume of ours: nothing can be attached
	}
	reg, err := p.registry()
	if err != nil {
		return err
	}
	for try := 0; try < casRetries; try++ {
		atts, err := reg.LoadAttachments(ctx, volumeID, id.UUID)
		if err != nil {
			return classify(err, "reading the attachments of "+volumeID)
		}
		var keep []records.AttachmentRecord
		var gone []string
		for _, r := range atts.Items {
			if nodeID == "" || r.Node == nodeID {
				gone = append(gone, r.Node)
			} else {
				keep = append(keep, r)
			}
		}
		if len(gone) == 0 {
			// Nothing recorded; still drop a stale index entry if one is left.
			if nodeID != "" {
				return classify(reg.UnindexAttachment(ctx, nodeID, volumeID), "unindexing the attachment")
			}
			return nil
		}
		atts.Items = keep
		err = reg.SaveAttachments(ctx, id.UUID, atts)
		if lostRace(err) {
			continue
		}
		if err != nil {
			return classify(err, "writing the attachments of "+volumeID)
		}
		if err := failpoint.Hit("unpublish/after-save"); err != nil {
			return classify(err, "unpublishing "+volumeID)
		}
		for _, n := range gone {
			if err := reg.UnindexAttachment(ctx, n, volumeID); err != nil {
				return classify(err, "unindexing the attachment")
			}
		}
		p.Log.Info("volume unpublished", "volume", volumeID, "nodes", strings.Join(gone, ","))
		return nil
	}
	return errorf(Aborted, nil, "attachments of %s keep changing concurrently; retry", volumeID)
}

// PublishedNodes lists the nodes a volume is published to, sorted.
func (p *Provisioner) PublishedNodes(ctx context.Context, volumeID string) ([]string, error) {
	id, err := volumeid.Parse(volumeID)
	if err != nil {
		return nil, nil
	}
	reg, err := p.registry()
	if err != nil {
		return nil, err
	}
	atts, err := reg.LoadAttachments(ctx, volumeID, id.UUID)
	if err != nil {
		return nil, classify(err, "reading the attachments of "+volumeID)
	}
	nodes := atts.Nodes()
	sort.Strings(nodes)
	return nodes, nil
}

// PublishedNodesByVolume maps every attached volume to its nodes (sorted),
// from the node attachment index: one omap read per 500 attachments in the
// cluster, however many volumes there are, so a ListVolumes page costs a
// constant number of round trips instead of one read per volume. The index
// is written before an attachment and cleared after one ends, so it never
// misses an attachment; it may for a moment name one being published or one
// whose publish crashed before it was recorded (until the CO retries or
// unpublishes it), which a CO treats as attached-but-unknown, not as lost.
func (p *Provisioner) PublishedNodesByVolume(ctx context.Context) (map[string][]string, error) {
	reg, err := p.registry()
	if err != nil {
		return nil, err
	}
	recs, err := reg.NodeAttachments(ctx, "")
	if err != nil {
		return nil, classify(err, "reading the attachment index")
	}
	out := map[string][]string{}
	for _, r := range recs {
		out[r.VolumeID] = append(out[r.VolumeID], r.Node)
	}
	for _, nodes := range out {
		sort.Strings(nodes)
	}
	return out, nil
}

// Attachment returns the attachment of volumeID to nodeID (for the node
// plugin's stage check), NotFound-kind error if there is none.
func (p *Provisioner) Attachment(ctx context.Context, volumeID, nodeID string) (records.AttachmentRecord, error) {
	id, err := volumeid.Parse(volumeID)
	if err != nil {
		return records.AttachmentRecord{}, errorf(NotFound, err, "volume %q does not exist", volumeID)
	}
	reg, err := p.registry()
	if err != nil {
		return records.AttachmentRecord{}, err
	}
	atts, err := reg.LoadAttachments(ctx, volumeID, id.UUID)
	if err != nil {
		return records.AttachmentRecord{}, classify(err, "reading the attachments of "+volumeID)
	}
	r, ok := atts.For(nodeID)
	if !ok {
		return r, errorf(FailedPrecondition, nil, "volume %s is not published to node %s (ControllerPublishVolume first)", volumeID, nodeID)
	}
	return r, nil
}
