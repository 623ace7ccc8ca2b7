package integration

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
)

// directWriteIOPS writes n 4 KiB blocks with O_DIRECT to path (a staged
// block volume) and returns the rate: what a QoS limit governs.
func directWriteIOPS(t *testing.T, path string, n int) float64 {
	t.Helper()
	start := time.Now()
	if out, err := exec.Command("dd", "if=/dev/zero", "of="+path, "bs=4k", "count="+strconv.Itoa(n), "oflag=direct", "conv=notrunc").CombinedOutput(); err != nil {
		t.Fatalf("dd: %v %s", err, out)
	}
	return float64(n) / time.Since(start).Seconds()
}

// QoS limits are mutable parameters: set by the StorageClass at create,
// changed by ControllerModifyVolume (a VolumeAttributesClass), stored as the
// image's librbd overrides and applied live by the rbd-fuse serving a
// staged volume. The rates are logged (the README reports them), not
// asserted. Wrong keys and values are InvalidArgument, an unknown volume
// NotFound.
func TestModifyVolumeQoS(t *testing.T) {
	d := startDriver(t, configYAML(), nil)
	n := startNode(t, d, "node-qos")
	ctx := tctx(t)
	v := create(t, d, "pvc-qos", 256*mib, map[string]string{"backend": "a-std", "qosIopsLimit": "100"}, nil)
	image := "volumes/" + imageOf(t, v)
	meta := func() string { return c1.rbd(t, "image-meta", "list", image) }
	if m := meta(); !strings.Contains(m, "conf_rbd_qos_iops_limit") || !strings.Contains(m, "100") {
		t.Fatalf("QoS from the StorageClass not on the image:\n%s", m)
	}
	bvc := capFor(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, true)
	s := stageAndPublish(t, d, n, v.GetVolumeId(), bvc)
	limited := directWriteIOPS(t, s.target, 200)

	modify := func(params map[string]string) error {
		_, err := d.ctrl.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{VolumeId: v.GetVolumeId(), MutableParameters: params})
		return err
	}
	must(t, modify(map[string]string{"qosIopsLimit": "400", "qosWriteBpsLimit": "52428800"}))
	must(t, modify(map[string]string{"qosIopsLimit": "400", "qosWriteBpsLimit": "52428800"})) // idempotent
	if m := meta(); !strings.Contains(m, "400") || !strings.Contains(m, "conf_rbd_qos_write_bps_limit") {
		t.Fatalf("modified QoS not on the image:\n%s", m)
	}
	raised := directWriteIOPS(t, s.target, 400)
	must(t, modify(map[string]string{"qosIopsLimit": "0", "qosWriteBpsLimit": "0"})) // unlimited
	if m := meta(); strings.Contains(m, "conf_rbd_qos") {
		t.Fatalf("QoS overrides left after setting 0:\n%s", m)
	}
	unlimited := directWriteIOPS(t, s.target, 400)
	t.Logf("4 KiB O_DIRECT writes through rbd-fuse: %.0f IOPS at qosIopsLimit=100, %.0f at 400, %.0f unlimited", limited, raised, unlimited)

	wantCode(t, modify(map[string]string{"qosIopsLimit": "fast"}), codes.InvalidArgument, "qosIopsLimit")
	wantCode(t, modify(map[string]string{"qosBogus": "1"}), codes.InvalidArgument, "qosBogus")
	wantCode(t, modify(map[string]string{"backend": "a-fast"}), codes.FailedPrecondition, "unpublished")
	wantCode(t, modify(map[string]string{"backend": "nowhere"}), codes.InvalidArgument, "nowhere")
	_, err := d.ctrl.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{VolumeId: "bsl1.0000.1.00000000000000000000000000000000", MutableParameters: map[string]string{"qosIopsLimit": "1"}})
	wantCode(t, err, codes.NotFound)
	_, err = d.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-qos-bad", VolumeCapabilities: mountCap(), Parameters: map[string]string{"qosBpsLimit": "-5"}})
	wantCode(t, err, codes.InvalidArgument, "qosBpsLimit")
	_, err = d.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-qos-bad", VolumeCapabilities: mountCap(), MutableParameters: map[string]string{"image": golden}})
	wantCode(t, err, codes.InvalidArgument, "image")

	s.teardown(t, d, n)
	del(t, d, v.GetVolumeId())
}
