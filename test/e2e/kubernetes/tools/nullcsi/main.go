// Command nullcsi is a CSI driver that does no storage work: the control of
// `make bench-k8s`. Run with the same sidecars, flags and CSIDriver settings
// as Basalt, the time Kubernetes takes to bind, attach and mount its volumes
// is the control plane's own limit on this machine, against which Basalt's
// times are compared. The issue asked for csi-driver-host-path in that role
// (it too does no storage work beyond a directory per volume), but the
// module proxy serves no version of it; this is the same idea, kept as small
// as the registrar and livenessprobe stand-ins next to it.
//
// What it does: CreateVolume names a volume after the request (idempotent,
// no state); ControllerPublishVolume succeeds; NodePublishVolume bind-mounts
// a directory of its own onto the target, as host-path does, so that a pod
// can write to the volume; GetCapacity reports 1 PiB. It answers the
// capabilities Basalt's sidecars expect (topology, capacity, attach).
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const zoneKey = "topology.null.basalt.dev/zone"

type driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer
	name, nodeID, dataDir string
}

func main() {
	endpoint := flag.String("endpoint", "unix:///csi/csi.sock", "CSI socket")
	name := flag.String("driver-name", "null.basalt.dev", "CSI driver name")
	nodeID := flag.String("node-id", "", "node ID (node plugin)")
	dataDir := flag.String("data-dir", "", "directory of the volumes' directories (node plugin)")
	flag.Parse()
	sock := strings.TrimPrefix(*endpoint, "unix://")
	if err := os.Remove(sock); err != nil && !os.IsNotExist(err) {
		log.Fatalf("nullcsi: %v", err)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		log.Fatalf("nullcsi: %v", err)
	}
	d := &driver{name: *name, nodeID: *nodeID, dataDir: *dataDir}
	srv := grpc.NewServer(grpc.UnaryInterceptor(logCalls))
	csi.RegisterIdentityServer(srv, d)
	csi.RegisterControllerServer(srv, d)
	csi.RegisterNodeServer(srv, d)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() { log.Printf("nullcsi: %v, stopping", <-sig); srv.Stop() }()
	log.Printf("nullcsi: %s serving %s", *name, sock)
	if err := srv.Serve(l); err != nil {
		log.Printf("nullcsi: serve: %v", err)
	}
}

// logCalls logs the failures only: the successes are all alike, and the
// benchmark reads its timings from Kubernetes, not from this log.
func logCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	resp, err := h(ctx, req)
	if err != nil {
		log.Printf("nullcsi: %s: %v", info.FullMethod, err)
	}
	return resp, err
}

func (d *driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: d.name, VendorVersion: "0"}, nil
}

func (d *driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	var caps []*csi.PluginCapability
	for _, c := range []csi.PluginCapability_Service_Type{csi.PluginCapability_Service_CONTROLLER_SERVICE, csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS} {
		caps = append(caps, &csi.PluginCapability{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: c}}})
	}
	return &csi.GetPluginCapabilitiesResponse{Capabilities: caps}, nil
}

func (d *driver) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{}, nil
}

func (d *driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, c := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: c}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

// CreateVolume: the ID is derived from the name, so a retry gets the same
// volume without any state kept.
func (d *driver) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name is required")
	}
	sum := sha256.Sum256([]byte(req.GetName()))
	var topo []*csi.Topology
	if t := req.GetAccessibilityRequirements().GetPreferred(); len(t) > 0 {
		topo = t[:1]
	} else if t := req.GetAccessibilityRequirements().GetRequisite(); len(t) > 0 {
		topo = t[:1]
	}
	return &csi.CreateVolumeResponse{Volume: &csi.Volume{
		VolumeId:           "null-" + hex.EncodeToString(sum[:12]),
		CapacityBytes:      req.GetCapacityRange().GetRequiredBytes(),
		AccessibleTopology: topo,
	}}, nil
}

func (d *driver) DeleteVolume(context.Context, *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	return &csi.DeleteVolumeResponse{}, nil
}

func (d *driver) ControllerPublishVolume(_ context.Context, req *csi.ControllerPublishVolumeRequest) (*csi.ControllerPublishVolumeResponse, error) {
	if req.GetVolumeId() == "" || req.GetNodeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume and node IDs are required")
	}
	return &csi.ControllerPublishVolumeResponse{}, nil
}

func (d *driver) ControllerUnpublishVolume(context.Context, *csi.ControllerUnpublishVolumeRequest) (*csi.ControllerUnpublishVolumeResponse, error) {
	return &csi.ControllerUnpublishVolumeResponse{}, nil
}

func (d *driver) ValidateVolumeCapabilities(_ context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{VolumeCapabilities: req.GetVolumeCapabilities()}}, nil
}

func (d *driver) GetCapacity(context.Context, *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	return &csi.GetCapacityResponse{AvailableCapacity: 1 << 50}, nil
}

func (d *driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: d.nodeID, AccessibleTopology: &csi.Topology{Segments: map[string]string{zoneKey: "z"}}}, nil
}

func (d *driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{}, nil
}

// NodePublishVolume bind-mounts the volume's directory onto the target;
// already mounted (a retry) is success.
func (d *driver) NodePublishVolume(_ context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	if id == "" || target == "" || strings.Contains(id, "/") {
		return nil, status.Error(codes.InvalidArgument, "volume ID and target path are required")
	}
	src := filepath.Join(d.dataDir, id)
	if err := os.MkdirAll(src, 0o777); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if err := os.MkdirAll(target, 0o750); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if mounted(target) {
		return &csi.NodePublishVolumeResponse{}, nil
	}
	if err := syscall.Mount(src, target, "", syscall.MS_BIND, ""); err != nil {
		return nil, status.Errorf(codes.Internal, "bind %s on %s: %v", src, target, err)
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

// NodeUnpublishVolume unmounts and removes the target; the volume's
// directory goes too (a new publish starts empty, as a new volume would).
func (d *driver) NodeUnpublishVolume(_ context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	if id == "" || target == "" || strings.Contains(id, "/") {
		return nil, status.Error(codes.InvalidArgument, "volume ID and target path are required")
	}
	if err := syscall.Unmount(target, 0); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
		return nil, status.Errorf(codes.Internal, "unmount %s: %v", target, err)
	}
	if err := os.Remove(target); err != nil && !os.IsNotExist(err) {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if err := os.RemoveAll(filepath.Join(d.dataDir, id)); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// mounted: target is a mount point. A bind from the same filesystem keeps
// the device number, so ask mountinfo.
func mounted(target string) bool {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == target {
			return true
		}
	}
	return false
}
