package integration

import (
	"fmt"
	"math/rand"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/basalt-csi/basalt/pkg/volumeid"
)

// Malformed and random controller requests against a running driver on
// real Ceph: never a panic (the driver keeps answering), never Internal,
// never a change in Ceph (images, snapshots, records).
func TestFuzzControllerRequests(t *testing.T) {
	d := startDriver(t, configYAML(), nil)
	gc := csi.NewGroupControllerClient(d.conn)
	ctx := tctx(t)
	reg := registry(t, d)
	count := func() string {
		vols, _, _ := reg.Volumes(ctx, "", 1000)
		snaps, _, _ := reg.Snapshots(ctx, "", "", 1000)
		return fmt.Sprintf("images %v/%v, %d volumes, %d snapshots", c1.images(t, "volumes"), c2.images(t, "volumes"), len(vols), len(snaps))
	}
	before := count()
	rng := rand.New(rand.NewSource(1))
	unknownVol, _ := volumeid.New(c1.FSID, 1)
	ids := []string{"", "x", "bsl1", "bsl1..", unknownVol.String(), unknownVol.String() + ".", "bss1." + strings.Repeat("f", 200),
		"bsg1.0.0.0", strings.Repeat("é", 70), "bsl1.00000000000000000000000000000000.-1." + strings.Repeat("a", 32), "\x00", "../../etc/passwd"} // proto3 strings are UTF-8: a client cannot send other bytes
	names := []string{"", strings.Repeat("n", 129), "\x7f", "ok-name"}
	pick := func(l []string) string { return l[rng.Intn(len(l))] }
	params := func() map[string]string {
		switch rng.Intn(5) {
		case 0:
			return map[string]string{"image": pick([]string{"", "a", "a/b", "a/b@", "/b@c", "images/golden@nope", "images/golden@v1/x"})}
		case 1:
			return map[string]string{pick([]string{"colour", "backend", "capability.", "csi.storage.k8s.io/fstype"}): pick([]string{"", "nope", "\x00"})}
		case 2:
			return map[string]string{"backend": "nope"}
		case 3:
			return map[string]string{pick([]string{"qosIopsLimit", "qosBpsLimit", "qosReadIopsLimit", "qosNope"}): pick([]string{"", "-1", "1.5", "1e9", "lots"})}
		}
		return nil
	}
	caps := func() []*csi.VolumeCapability {
		switch rng.Intn(4) {
		case 0:
			return nil
		case 1:
			return []*csi.VolumeCapability{{}}
		case 2:
			return []*csi.VolumeCapability{{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ntfs"}},
				AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_Mode(rng.Intn(9))}}}
		}
		return []*csi.VolumeCapability{{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER}}}
	}
	calls := []func() error{
		func() error {
			_, err := d.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: pick(names), VolumeCapabilities: caps(), Parameters: params(),
				CapacityRange: &csi.CapacityRange{RequiredBytes: rng.Int63n(1<<50) - 1<<40, LimitBytes: rng.Int63n(1 << 30)}})
			return err
		},
		func() error {
			_, err := d.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "fuzz-src", VolumeCapabilities: mountCap(),
				VolumeContentSource: pick2(rng, fromSnapshot(pick(ids)), fromVolume(pick(ids)), &csi.VolumeContentSource{})})
			return err
		},
		func() error {
			_, err := d.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: pick(ids)})
			return err
		},
		func() error {
			_, err := d.ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: pick(ids), NodeId: pick(names), VolumeCapability: pick2(rng, caps()...)})
			return err
		},
		func() error {
			_, err := d.ctrl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: pick(ids), NodeId: pick(names)})
			return err
		},
		func() error {
			_, err := d.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: pick(names), SourceVolumeId: pick(ids), Parameters: params()})
			return err
		},
		func() error {
			_, err := d.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: pick(ids)})
			return err
		},
		func() error {
			_, err := d.ctrl.GetSnapshot(ctx, &csi.GetSnapshotRequest{SnapshotId: pick(ids)})
			return err
		},
		func() error {
			_, err := d.ctrl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: pick(ids), SourceVolumeId: pick(ids), StartingToken: pick(ids), MaxEntries: int32(rng.Intn(3)) - 1})
			return err
		},
		func() error {
			_, err := d.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: pick(ids), MaxEntries: int32(rng.Intn(3)) - 1})
			return err
		},
		func() error {
			_, err := d.ctrl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: pick(ids)})
			return err
		},
		func() error {
			_, err := d.ctrl.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: pick(ids), VolumeCapabilities: caps(), Parameters: params()})
			return err
		},
		func() error {
			_, err := gc.CreateVolumeGroupSnapshot(ctx, &csi.CreateVolumeGroupSnapshotRequest{Name: pick(names), SourceVolumeIds: []string{pick(ids), pick(ids)}})
			return err
		},
		func() error {
			_, err := gc.DeleteVolumeGroupSnapshot(ctx, &csi.DeleteVolumeGroupSnapshotRequest{GroupSnapshotId: pick(ids), SnapshotIds: []string{pick(ids)}})
			return err
		},
		func() error {
			_, err := gc.GetVolumeGroupSnapshot(ctx, &csi.GetVolumeGroupSnapshotRequest{GroupSnapshotId: pick(ids)})
			return err
		},
		func() error {
			_, err := d.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: pick(ids), VolumeCapability: pick2(rng, caps()...),
				CapacityRange: pick2(rng, nil, &csi.CapacityRange{RequiredBytes: rng.Int63n(1<<50) - 1<<40, LimitBytes: rng.Int63n(1<<30) - 1<<29})})
			return err
		},
		func() error {
			_, err := d.ctrl.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{VolumeId: pick(ids), MutableParameters: params()})
			return err
		},
	}
	const n = 600
	codesSeen := map[codes.Code]int{}
	for i := 0; i < n; i++ {
		err := calls[rng.Intn(len(calls))]()
		code := status.Code(err)
		codesSeen[code]++
		if code == codes.Internal || code == codes.Unknown || code == codes.Unavailable {
			t.Errorf("request %d answered %v", i, err)
		}
	}
	if _, err := d.ids.Probe(ctx, &csi.ProbeRequest{}); err != nil {
		t.Fatalf("the driver stopped answering: %v", err)
	}
	if after := count(); after != before {
		t.Fatalf("Ceph changed under malformed requests:\nbefore %s\nafter  %s", before, after)
	}
	t.Logf("%d malformed requests, codes: %v", n, codesSeen)
}

// pick2 picks one of vs.
func pick2[T any](rng *rand.Rand, vs ...T) T {
	var zero T
	if len(vs) == 0 {
		return zero
	}
	return vs[rng.Intn(len(vs))]
}
