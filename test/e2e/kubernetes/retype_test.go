package kubernetes

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A retype between the two backends (pools) of the e2e cluster: a PVC made
// with a VolumeAttributesClass that pins backend a-one is written by a pod;
// once the pod is gone the PVC switches to a class pinning a-two, and
// csi-resizer's ControllerModifyVolume moves the image by RBD live
// migration. The PV is the same, and a new pod reads the data through it.
// Then the moved ext4 volume grows (at the next stage: see Expansion).
func TestRetypeKeepsDataAndPV(t *testing.T) {
	kubectl(t, "apply", "-f", filepath.Join(repoRoot, "examples/kubernetes/storageclass.yaml"))
	kubectlIn(t, `apiVersion: storage.k8s.io/v1
kind: VolumeAttributesClass
metadata: {name: basalt-on-a-one}
driverName: rbd.basalt.dev
parameters: {backend: a-one}
---
apiVersion: storage.k8s.io/v1
kind: VolumeAttributesClass
metadata: {name: basalt-on-a-two}
driverName: rbd.basalt.dev
parameters: {backend: a-two, qosIopsLimit: "2000"}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: retype-data}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: basalt-golden
  volumeAttributesClassName: basalt-on-a-one
  resources: {requests: {storage: 256Mi}}
`, "apply", "-f", "-")
	const text = "written on a-one, read on a-two"
	kubectlIn(t, podYAML("retype-app-1", "retype-data"), "apply", "-f", "-")
	waitPodRunning(t, "retype-app-1")
	pvc := jsonOf(t, "get", "pvc", "retype-data")
	pv := str(pvc, "spec", "volumeName")
	pvObj := jsonOf(t, "get", "pv", pv)
	handle := str(pvObj, "spec", "csi", "volumeHandle")
	if b := str(pvObj, "spec", "csi", "volumeAttributes", "backend"); b != "a-one" {
		t.Fatalf("the VolumeAttributesClass at create did not pin the volume to a-one: %s", b)
	}
	name := str(pvObj, "spec", "csi", "volumeAttributes", "imageName")
	// Written through the pod's mount (this e2e's containers are not real
	// processes; the kubelet's mount is).
	if err := os.WriteFile(filepath.Join(podVolumeDir(t, "retype-app-1", pv), "retype.txt"), []byte(text+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	// The pod goes (a volume moves only unpublished), the class changes.
	kubectl(t, "delete", "pod", "retype-app-1", "--wait=false")
	waitPodGone(t, "retype-app-1")
	kubectl(t, "patch", "pvc", "retype-data", "--type=merge", "-p", `{"spec":{"volumeAttributesClassName":"basalt-on-a-two"}}`)
	eventually(t, "the image moved to a-two's pool", 4*time.Minute, func() string {
		imgs := basaltImages(t)
		if !slices.Contains(imgs, "volumes-b/"+name) || slices.Contains(imgs, "volumes-a/"+name) {
			return fmt.Sprintf("images %v", imgs)
		}
		if c := str(jsonOf(t, "get", "pvc", "retype-data"), "status", "currentVolumeAttributesClassName"); c != "basalt-on-a-two" {
			return "currentVolumeAttributesClassName " + c
		}
		return ""
	})
	if m := rbd(t, "image-meta", "list", "volumes-b/"+name); !strings.Contains(m, "2000") {
		t.Fatalf("QoS of the new class not on the moved image:\n%s", m)
	}
	pvc = jsonOf(t, "get", "pvc", "retype-data")
	if str(pvc, "spec", "volumeName") != pv || str(jsonOf(t, "get", "pv", pv), "spec", "csi", "volumeHandle") != handle {
		t.Fatalf("the claim is bound to another volume after the retype: %v", get(pvc, "spec"))
	}

	kubectlIn(t, podYAML("retype-app-2", "retype-data"), "apply", "-f", "-")
	waitPodRunning(t, "retype-app-2")
	got, err := os.ReadFile(filepath.Join(podVolumeDir(t, "retype-app-2", pv), "retype.txt"))
	if err != nil || strings.TrimSpace(string(got)) != text {
		t.Fatalf("after the retype the pod's mount holds %q (%v), want %q", got, err, text)
	}
	if golden, err := os.ReadFile(filepath.Join(podVolumeDir(t, "retype-app-2", pv), "golden.txt")); err != nil || strings.TrimSpace(string(golden)) != goldenText {
		t.Fatalf("the golden image's file after the retype: %q %v", golden, err)
	}

	// The moved ext4 volume grows: ext4 cannot grow online here (no
	// CAP_SYS_RESOURCE), so NodeExpandVolume refuses and the filesystem
	// grows when the next pod stages the volume.
	kubectl(t, "patch", "pvc", "retype-data", "--type=merge", "-p", `{"spec":{"resources":{"requests":{"storage":"384Mi"}}}}`)
	eventually(t, "the image grown (ControllerExpandVolume)", 3*time.Minute, func() string {
		if got := rbd(t, "info", "--format", "json", "volumes-b/"+name); !strings.Contains(got, `"size":402653184`) {
			return got
		}
		return ""
	})
	kubectl(t, "delete", "pod", "retype-app-2", "--wait=false")
	waitPodGone(t, "retype-app-2")
	kubectlIn(t, podYAML("retype-app-3", "retype-data"), "apply", "-f", "-")
	waitPodRunning(t, "retype-app-3")
	eventually(t, "the ext4 filesystem grown at the new stage", 3*time.Minute, func() string {
		if c := str(jsonOf(t, "get", "pvc", "retype-data"), "status", "capacity", "storage"); c != "384Mi" {
			return "PVC capacity " + c
		}
		var st syscall.Statfs_t
		if err := syscall.Statfs(podVolumeDir(t, "retype-app-3", pv), &st); err != nil {
			return err.Error()
		}
		if total := int64(st.Blocks) * st.Bsize; total < 320<<20 {
			return "filesystem " + strconv.FormatInt(total, 10) + " bytes"
		}
		return ""
	})

	releaseClaim(t, "retype-app-3", "retype-data", name)
	kubectl(t, "delete", "volumeattributesclass", "basalt-on-a-one", "basalt-on-a-two")
}
