package kubernetes

import (
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A PVC of a running pod grows (csi-resizer's ControllerExpandVolume, then
// the kubelet's NodeExpandVolume: xfs online, while mounted), and a change
// of its VolumeAttributesClass applies new QoS limits to the RBD image
// (csi-resizer's ControllerModifyVolume).
func TestExpansionAndVolumeAttributesClass(t *testing.T) {
	kubectlIn(t, `apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: basalt-xfs}
provisioner: rbd.basalt.dev
parameters: {csi.storage.k8s.io/fstype: xfs}
allowVolumeExpansion: true
volumeBindingMode: WaitForFirstConsumer
---
apiVersion: storage.k8s.io/v1
kind: VolumeAttributesClass
metadata: {name: basalt-qos-slow}
driverName: rbd.basalt.dev
parameters: {qosIopsLimit: "100"}
---
apiVersion: storage.k8s.io/v1
kind: VolumeAttributesClass
metadata: {name: basalt-qos-fast}
driverName: rbd.basalt.dev
parameters: {qosIopsLimit: "1000", qosWriteBpsLimit: "104857600"}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: grow-data}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: basalt-xfs
  volumeAttributesClassName: basalt-qos-slow
  resources: {requests: {storage: 320Mi}}
`, "apply", "-f", "-")
	kubectlIn(t, podYAML("grow-app", "grow-data"), "apply", "-f", "-")
	waitPodRunning(t, "grow-app")
	pvc := jsonOf(t, "get", "pvc", "grow-data")
	pv := str(pvc, "spec", "volumeName")
	pvObj := jsonOf(t, "get", "pv", pv)
	image := poolOf(str(pvObj, "spec", "csi", "volumeAttributes", "backend")) + "/" + str(pvObj, "spec", "csi", "volumeAttributes", "imageName")
	if m := rbd(t, "image-meta", "list", image); !strings.Contains(m, "conf_rbd_qos_iops_limit") || !strings.Contains(m, "100") {
		t.Fatalf("the VolumeAttributesClass at create did not set QoS on %s:\n%s", image, m)
	}

	// Grow the claim while the pod uses it.
	kubectl(t, "patch", "pvc", "grow-data", "--type=merge", "-p", `{"spec":{"resources":{"requests":{"storage":"640Mi"}}}}`)
	dir := podVolumeDir(t, "grow-app", pv)
	eventually(t, "PVC grown to 640Mi and the filesystem with it", 3*time.Minute, func() string {
		p := jsonOf(t, "get", "pvc", "grow-data")
		if c := str(p, "status", "capacity", "storage"); c != "640Mi" {
			return "PVC capacity " + c
		}
		var st syscall.Statfs_t
		if err := syscall.Statfs(dir, &st); err != nil {
			return err.Error()
		}
		if total := int64(st.Blocks) * st.Bsize; total < 560<<20 {
			return "filesystem " + strconv.FormatInt(total, 10) + " bytes"
		}
		return ""
	})
	if got := rbd(t, "info", "--format", "json", image); !strings.Contains(got, `"size":671088640`) {
		t.Fatalf("image after the expansion: %s", got)
	}

	// Change the class of service.
	kubectl(t, "patch", "pvc", "grow-data", "--type=merge", "-p", `{"spec":{"volumeAttributesClassName":"basalt-qos-fast"}}`)
	eventually(t, "QoS of the new VolumeAttributesClass on the image", 3*time.Minute, func() string {
		m := rbd(t, "image-meta", "list", image)
		if !strings.Contains(m, "1000") || !strings.Contains(m, "conf_rbd_qos_write_bps_limit") {
			return m
		}
		if c := str(jsonOf(t, "get", "pvc", "grow-data"), "status", "currentVolumeAttributesClassName"); c != "basalt-qos-fast" {
			return "currentVolumeAttributesClassName " + c
		}
		return ""
	})

	releaseClaim(t, "grow-app", "grow-data", image[strings.IndexByte(image, '/')+1:])
	kubectl(t, "delete", "storageclass", "basalt-xfs")
	kubectl(t, "delete", "volumeattributesclass", "basalt-qos-slow", "basalt-qos-fast")
}

// poolOf is the pool of an e2e backend (cluster.sh's configuration).
func poolOf(backend string) string {
	if backend == "a-two" {
		return "volumes-b"
	}
	return "volumes-a"
}
