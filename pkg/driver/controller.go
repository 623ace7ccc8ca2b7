package driver

import (
	"context"
	"log/slog"
	"maps"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/basalt-csi/basalt/pkg/locks"
	"github.com/basalt-csi/basalt/pkg/provision"
	"github.com/basalt-csi/basalt/pkg/records"
	"github.com/basalt-csi/basalt/pkg/scheduler"
	"github.com/basalt-csi/basalt/pkg/volumeid"
)

// LockWait bounds how long a request waits for another one on the same
// volume or name before it answers Aborted (the CO retries).
var LockWait = 60 * time.Second

// Controller implements csi.ControllerServer.
type Controller struct {
	csi.UnimplementedControllerServer
	Prov *provision.Provisioner
	Log  *slog.Logger
}

// NewController wires a controller.
func NewController(p *provision.Provisioner, log *slog.Logger) *Controller {
	if p.Locks == nil {
		p.Locks = locks.New()
	}
	return &Controller{Prov: p, Log: log}
}

func (c *Controller) lock(ctx context.Context, key string) (func(), error) {
	lctx, cancel := context.WithTimeout(ctx, LockWait)
	defer cancel()
	unlock, err := c.Prov.Locks.Lock(lctx, key)
	if err != nil {
		return nil, status.Errorf(codes.Aborted, "another operation on %s is still in progress; retry later", key)
	}
	return unlock, nil
}

// CreateVolume implements csi.ControllerServer.
func (c *Controller) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, invalid("name is required")
	}
	if len(req.GetName()) > 128 {
		return nil, invalid("name is longer than 128 bytes")
	}
	if err := validateCapabilities(req.GetVolumeCapabilities()); err != nil {
		return nil, err
	}
	cr := req.GetCapacityRange()
	if cr.GetRequiredBytes() < 0 || cr.GetLimitBytes() < 0 {
		return nil, invalid("capacity_range bytes must not be negative")
	}
	if cr.GetLimitBytes() != 0 && cr.GetRequiredBytes() > cr.GetLimitBytes() {
		return nil, status.Errorf(codes.OutOfRange, "required_bytes %d is above limit_bytes %d", cr.GetRequiredBytes(), cr.GetLimitBytes())
	}
	required := cr.GetRequiredBytes() // 0: the source's size, or the default
	if min := minBytes(req.GetVolumeCapabilities()); required > 0 && required < min {
		if cr.GetLimitBytes() != 0 && cr.GetLimitBytes() < min {
			return nil, status.Errorf(codes.OutOfRange, "an xfs volume needs at least %d bytes (300 MiB), above limit_bytes %d", min, cr.GetLimitBytes())
		}
		required = min
	}
	// mutable_parameters (a VolumeAttributesClass at create) may hold only
	// mutable keys; they apply like the same StorageClass parameters (and
	// win over them: the class of service is the VolumeAttributesClass's).
	for k := range req.GetMutableParameters() {
		if !isMutable(k) {
			return nil, invalid("mutable parameter %q is not one Basalt can change (mutable: %s, %s, %s<key>)", k, provision.QoSParams(), ParamBackend, ParamCapability)
		}
	}
	all := maps.Clone(req.GetParameters())
	if all == nil {
		all = map[string]string{}
	}
	maps.Copy(all, req.GetMutableParameters())
	params, err := parseParams(all)
	if err != nil {
		return nil, err
	}
	if params.backend != "" {
		if _, ok := c.Prov.Backends.Config().Backend(params.backend); !ok {
			return nil, invalid("parameter %q: no backend is named %q (configured: %v)", ParamBackend, params.backend, c.Prov.Backends.Names())
		}
	}
	source, err := contentSource(req.GetVolumeContentSource())
	if err != nil {
		return nil, err
	}
	if source != nil {
		params.image = nil // the snapshot or volume holds the data; the class's image does not apply
	}
	unlock, err := c.lock(ctx, provision.LockName(req.GetName()))
	if err != nil {
		return nil, err
	}
	defer unlock()

	v, err := c.Prov.Create(ctx, provision.Request{
		Source:        source,
		Name:          req.GetName(),
		RequiredBytes: uint64(required),
		LimitBytes:    uint64(cr.GetLimitBytes()),
		Image:         params.image,
		Params:        params.identity,
		Metadata:      params.metadata,
		Sched:         params.schedRequest(req.GetAccessibilityRequirements()),
	})
	if err != nil {
		return nil, toStatus(err)
	}
	vol := c.csiVolume(v.ID, v.Backend, v.Zone, v.SizeBytes, v.Source)
	vol.ContentSource = req.GetVolumeContentSource()
	return &csi.CreateVolumeResponse{Volume: vol}, nil
}

func (c *Controller) csiVolume(id volumeid.ID, backendName, zone string, size uint64, source string) *csi.Volume {
	ctx := map[string]string{
		"backend":   backendName,
		"clusterID": id.FSID,
		"imageName": id.ImageName(),
	}
	if b, ok := c.Prov.Backends.Config().Backend(backendName); ok {
		ctx["pool"] = b.Pool
	}
	if source != "" {
		ctx["source"] = source
	}
	return &csi.Volume{
		VolumeId:           id.String(),
		CapacityBytes:      int64(size),
		VolumeContext:      ctx,
		AccessibleTopology: topologyOf(zone),
	}
}

// DeleteVolume implements csi.ControllerServer.
func (c *Controller) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume_id is required")
	}
	unlock, err := c.lock(ctx, provision.LockVolume(req.GetVolumeId()))
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := c.Prov.Delete(ctx, req.GetVolumeId()); err != nil {
		return nil, toStatus(err)
	}
	return &csi.DeleteVolumeResponse{}, nil
}

// ControllerExpandVolume implements csi.ControllerServer: the image grows
// (never shrinks), and a filesystem volume needs NodeExpandVolume.
func (c *Controller) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume_id is required")
	}
	cr := req.GetCapacityRange()
	if cr == nil || cr.GetRequiredBytes() <= 0 && cr.GetLimitBytes() <= 0 {
		return nil, invalid("capacity_range with required_bytes is required")
	}
	if cr.GetRequiredBytes() < 0 || cr.GetLimitBytes() < 0 {
		return nil, invalid("capacity_range bytes must not be negative")
	}
	if vc := req.GetVolumeCapability(); vc != nil {
		if err := validateCapability(vc); err != nil {
			return nil, err
		}
	}
	unlock, err := c.lock(ctx, provision.LockVolume(req.GetVolumeId()))
	if err != nil {
		return nil, err
	}
	defer unlock()
	size, err := c.Prov.Expand(ctx, req.GetVolumeId(), uint64(cr.GetRequiredBytes()), uint64(cr.GetLimitBytes()))
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.ControllerExpandVolumeResponse{
		CapacityBytes: int64(size),
		// A block volume is grown once the image is; a filesystem (or an
		// unknown access type) needs the node.
		NodeExpansionRequired: req.GetVolumeCapability().GetBlock() == nil,
	}, nil
}

// ControllerModifyVolume implements csi.ControllerServer: QoS limits
// (VolumeAttributesClass parameters) applied to the image, live; placement
// parameters (backend, capability.<key>) move the volume if its backend
// does not meet them (retype).
func (c *Controller) ControllerModifyVolume(ctx context.Context, req *csi.ControllerModifyVolumeRequest) (*csi.ControllerModifyVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume_id is required")
	}
	if len(req.GetMutableParameters()) == 0 {
		return nil, invalid("mutable_parameters are required")
	}
	qos := map[string]string{}
	var place provision.Placement
	for k, v := range req.GetMutableParameters() {
		switch {
		case k == ParamBackend:
			if _, ok := c.Prov.Backends.Config().Backend(v); !ok {
				return nil, invalid("parameter %q: no backend is named %q (configured: %v)", ParamBackend, v, c.Prov.Backends.Names())
			}
			place.Backend = v
		case strings.HasPrefix(k, ParamCapability) && k != ParamCapability:
			if place.Capabilities == nil {
				place.Capabilities = map[string]string{}
			}
			place.Capabilities[strings.TrimPrefix(k, ParamCapability)] = v
		default:
			qos[k] = v
		}
	}
	unlock, err := c.lock(ctx, provision.LockVolume(req.GetVolumeId()))
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := c.Prov.Modify(ctx, req.GetVolumeId(), qos, place); err != nil {
		return nil, toStatus(err)
	}
	return &csi.ControllerModifyVolumeResponse{}, nil
}

// isMutable tells whether a VolumeAttributesClass may set parameter k.
func isMutable(k string) bool {
	return provision.IsQoSParam(k) || k == ParamBackend || (strings.HasPrefix(k, ParamCapability) && k != ParamCapability)
}

// ValidateVolumeCapabilities implements csi.ControllerServer.
func (c *Controller) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume_id is required")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, invalid("volume_capabilities are required")
	}
	if _, _, _, err := c.Prov.Stat(ctx, req.GetVolumeId()); err != nil {
		return nil, toStatus(err)
	}
	if _, err := parseParams(req.GetParameters()); err != nil {
		return nil, err
	}
	if err := validateCapabilities(req.GetVolumeCapabilities()); err != nil {
		st := status.Convert(err)
		return &csi.ValidateVolumeCapabilitiesResponse{Message: st.Message()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

// ListVolumes implements csi.ControllerServer. The starting token is the last
// volume ID of the previous page; a page costs one omap read of its size and
// one read of the attachment index (per 500 attachments), never a read per
// volume.
func (c *Controller) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	if req.GetMaxEntries() < 0 {
		return nil, invalid("max_entries must not be negative")
	}
	if tok := req.GetStartingToken(); tok != "" {
		if _, err := volumeid.Parse(tok); err != nil {
			return nil, status.Errorf(codes.Aborted, "starting_token %q was not returned by this driver", tok)
		}
	}
	max := int(req.GetMaxEntries())
	if max == 0 || max > 1000 {
		max = 1000
	}
	reg, err := c.registry()
	if err != nil {
		return nil, err
	}
	page, next, err := reg.Volumes(ctx, req.GetStartingToken(), max)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "listing volumes: %v", err)
	}
	resp := &csi.ListVolumesResponse{NextToken: next}
	if len(page) == 0 {
		return resp, nil
	}
	published, err := c.Prov.PublishedNodesByVolume(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	for _, e := range page {
		id, err := volumeid.Parse(e.VolumeID)
		if err != nil {
			c.Log.Warn("skipping a malformed index entry", "key", e.VolumeID)
			continue
		}
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{
			Volume: c.csiVolume(id, e.Backend, e.Zone, e.SizeBytes, e.Source),
			Status: &csi.ListVolumesResponse_VolumeStatus{PublishedNodeIds: published[e.VolumeID]},
		})
	}
	return resp, nil
}

func (c *Controller) registry() (*records.Registry, error) {
	cl, err := c.Prov.Backends.Registry()
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "the registry backend is unreachable: %v", err)
	}
	return records.NewRegistry(cl), nil
}

// ControllerGetVolume implements csi.ControllerServer.
func (c *Controller) ControllerGetVolume(ctx context.Context, req *csi.ControllerGetVolumeRequest) (*csi.ControllerGetVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume_id is required")
	}
	id, bname, info, err := c.Prov.Stat(ctx, req.GetVolumeId())
	if err != nil {
		return nil, toStatus(err)
	}
	nodes, err := c.Prov.PublishedNodes(ctx, req.GetVolumeId())
	if err != nil {
		return nil, toStatus(err)
	}
	b, _ := c.Prov.Backends.Config().Backend(bname)
	return &csi.ControllerGetVolumeResponse{
		Volume: c.csiVolume(id, bname, b.Zone, info.SizeBytes, info.Metadata[provision.MetaSource]),
		Status: &csi.ControllerGetVolumeResponse_VolumeStatus{PublishedNodeIds: nodes},
	}, nil
}

// GetCapacity implements csi.ControllerServer: what the scheduler would
// allow for these parameters in this topology segment.
func (c *Controller) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	for _, vc := range req.GetVolumeCapabilities() {
		if reason := unsupported(vc); reason != "" {
			return &csi.GetCapacityResponse{AvailableCapacity: 0}, nil
		}
	}
	params, err := parseParams(req.GetParameters())
	if err != nil {
		return nil, err
	}
	sreq := params.schedRequest(nil)
	if t := req.GetAccessibleTopology(); t != nil {
		sreq.Requisite = []map[string]string{t.GetSegments()}
	}
	available, maxVol := scheduler.Capacity(c.Prov.Backends.Scheduler().Snapshot(), sreq)
	return &csi.GetCapacityResponse{
		AvailableCapacity: clampInt64(available),
		MaximumVolumeSize: wrapInt64(clampInt64(maxVol)),
		MinimumVolumeSize: wrapInt64(1 << 20),
	}, nil
}

// ControllerGetCapabilities implements csi.ControllerServer.
func (c *Controller) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, t := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
		csi.ControllerServiceCapability_RPC_GET_VOLUME,
		csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
		csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME,
		csi.ControllerServiceCapability_RPC_PUBLISH_READONLY,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES_PUBLISHED_NODES,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csi.ControllerServiceCapability_RPC_GET_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
		csi.ControllerServiceCapability_RPC_MODIFY_VOLUME,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

func clampInt64(n uint64) int64 {
	if n > 1<<63-1 {
		return 1<<63 - 1
	}
	return int64(n)
}
