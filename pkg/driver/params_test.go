package driver

import (
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestParseParams(t *testing.T) {
	p, err := parseParams(map[string]string{
		"image": "images/golden@v1", "backend": "fast-a", "capability.tier": "fast",
		"csi.storage.k8s.io/pvc/name": "data", "csi.storage.k8s.io/pvc/namespace": "ns",
		"csi.storage.k8s.io/pv/name": "pv-1", "csi.storage.k8s.io/fstype": "ext4",
	})
	if err != nil {
		t.Fatal(err)
	}
	if p.image.String() != "images/golden@v1" || p.backend != "fast-a" || p.caps["tier"] != "fast" {
		t.Fatalf("parsed %+v", p)
	}
	if len(p.identity) != 3 || p.identity["csi.storage.k8s.io/pvc/name"] != "" {
		t.Fatalf("identity %v must hold exactly image, backend and capabilities", p.identity)
	}
	if p.metadata["basalt.pvc-name"] != "data" || p.metadata["basalt.pvc-namespace"] != "ns" || p.metadata["basalt.pv-name"] != "pv-1" {
		t.Fatalf("metadata %v", p.metadata)
	}
	for params, mention := range map[string]string{
		"colour=red":    `"colour"`,
		"image=golden":  "pool/name@snap",
		"image=a/b":     "pool/name@snap",
		"image=a/b@":    "pool/name@snap",
		"image=/b@s":    "pool/name@snap",
		"backend=":      "backend",
		"capability.=x": "capability name",
	} {
		k, v, _ := strings.Cut(params, "=")
		_, err := parseParams(map[string]string{k: v})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), mention) {
			t.Errorf("%s: got %v, want InvalidArgument mentioning %s", params, err, mention)
		}
	}
}

func TestCapabilities(t *testing.T) {
	mk := func(block bool, fs string, mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
		c := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode}}
		if block {
			c.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
		} else {
			c.AccessType = &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs}}
		}
		return c
	}
	ok := []*csi.VolumeCapability{
		mk(false, "", csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER),
		mk(false, "xfs", csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY),
		mk(true, "", csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER),
		mk(false, "ext4", csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER),
	}
	if err := validateCapabilities(ok); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []*csi.VolumeCapability{
		nil,
		{AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}},
		mk(false, "ext4", csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER),
		mk(false, "btrfs", csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER),
		mk(true, "", csi.VolumeCapability_AccessMode_UNKNOWN),
		{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}},
	} {
		if err := validateCapabilities([]*csi.VolumeCapability{bad}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%v: got %v", bad, err)
		}
	}
	if err := validateCapabilities(nil); status.Code(err) != codes.InvalidArgument {
		t.Errorf("no capabilities: %v", err)
	}
}

func TestIsMutable(t *testing.T) {
	for k, want := range map[string]bool{
		"qosIopsLimit": true, "backend": true, "capability.tier": true,
		"capability.": false, "image": false, "csi.storage.k8s.io/pvc/name": false, "qosBogus": false,
	} {
		if got := isMutable(k); got != want {
			t.Errorf("isMutable(%q) = %v, want %v", k, got, want)
		}
	}
}

func TestMinBytes(t *testing.T) {
	mount := func(fs string) *csi.VolumeCapability {
		return &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs}}}
	}
	block := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}}
	for _, tc := range []struct {
		caps []*csi.VolumeCapability
		want int64
	}{
		{nil, 0},
		{[]*csi.VolumeCapability{block}, 0},
		{[]*csi.VolumeCapability{mount("")}, 0},
		{[]*csi.VolumeCapability{mount("ext4")}, 0},
		{[]*csi.VolumeCapability{mount("xfs")}, MinXFSBytes},
		{[]*csi.VolumeCapability{mount("ext4"), mount("xfs")}, MinXFSBytes},
	} {
		if got := minBytes(tc.caps); got != tc.want {
			t.Errorf("minBytes(%v) = %d, want %d", tc.caps, got, tc.want)
		}
	}
}
