package kubernetes

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// claim creates a PVC (with an optional dataSource block) and a pod using
// it, waits for the pod, and returns the PV and the volume's directory on
// this host.
func claim(t *testing.T, name, class, dataSource string, labels string) (pv, dir string) {
	t.Helper()
	kubectlIn(t, fmt.Sprintf(`apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: %s, labels: {%s}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: %s
  resources: {requests: {storage: 1Gi}}
%s`, name, labels, class, dataSource), "apply", "-f", "-")
	kubectlIn(t, podYAML("pod-"+name, name), "apply", "-f", "-")
	eventually(t, "PVC "+name+" bound", 3*time.Minute, func() string {
		p := jsonOf(t, "get", "pvc", name)
		if str(p, "status", "phase") != "Bound" {
			return "phase " + str(p, "status", "phase")
		}
		pv = str(p, "spec", "volumeName")
		return ""
	})
	waitPodRunning(t, "pod-"+name)
	return pv, podVolumeDir(t, "pod-"+name, pv)
}

func fromSnapshotSource(snap string) string {
	return "  dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: " + snap + "}\n"
}

// writeSynced writes a file and flushes the filesystem, so that a snapshot
// taken next holds it (a snapshot is crash-consistent, not a sync).
func writeSynced(t *testing.T, dir, name, content string) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, name))
	if err == nil {
		_, err = f.WriteString(content)
	}
	if err == nil {
		err = f.Sync()
	}
	if f != nil {
		f.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	if out, err := hostCmd(t, "sync", "-f", dir); err != nil {
		t.Fatalf("sync: %v %s", err, out)
	}
}

func hostCmd(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	return sh(t.Context(), nil, name, args...)
}

func readFile(t *testing.T, dir, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatalf("reading %s: %v", filepath.Join(dir, name), err)
	}
	return string(b)
}

func waitSnapshotReady(t *testing.T, kind, name string) map[string]any {
	t.Helper()
	var obj map[string]any
	eventually(t, kind+" "+name+" ready", 3*time.Minute, func() string {
		obj = jsonOf(t, "get", kind, name)
		if get(obj, "status", "readyToUse") != true {
			return fmt.Sprintf("status %v", get(obj, "status"))
		}
		return ""
	})
	return obj
}

func deletePods(t *testing.T, pods ...string) {
	t.Helper()
	for _, p := range pods {
		kubectl(t, "delete", "pod", p, "--wait=false")
	}
	for _, p := range pods {
		waitPodGone(t, p)
	}
}

// Snapshots, restores, clones and group snapshots through the real
// external-snapshotter (snapshot-controller and csi-snapshotter v8.6.0).
func TestSnapshotsRestoresClonesAndGroups(t *testing.T) {
	kubectl(t, "apply", "-f", filepath.Join(repoRoot, "examples/kubernetes/storageclass.yaml"))
	kubectl(t, "apply", "-f", filepath.Join(repoRoot, "examples/kubernetes/snapshotclass.yaml"))

	// A PVC from the golden image gets a file; a VolumeSnapshot becomes
	// ready; the file changes.
	srcPV, src := claim(t, "snap-src", "basalt-golden", "", "")
	writeSynced(t, src, "state.txt", "before")
	kubectlIn(t, `apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: snap-1}
spec:
  volumeSnapshotClassName: basalt-snapshots
  source: {persistentVolumeClaimName: snap-src}
`, "apply", "-f", "-")
	snap := waitSnapshotReady(t, "volumesnapshot", "snap-1")
	content := str(snap, "status", "boundVolumeSnapshotContentName")
	handle := str(jsonOf(t, "get", "volumesnapshotcontent", content), "status", "snapshotHandle")
	if !strings.HasPrefix(handle, "bss1.") {
		t.Fatalf("snapshot handle %q", handle)
	}
	if out := mustBasalt(t, "snapshots", "-o", "json"); !strings.Contains(out, handle) {
		t.Fatalf("basalt-csi snapshots does not list %s:\n%s", handle, out)
	}
	writeSynced(t, src, "state.txt", "after")

	// A restore sees the old content, a clone the new.
	_, restored := claim(t, "snap-restored", "basalt-golden", fromSnapshotSource("snap-1"), "")
	if got := readFile(t, restored, "state.txt"); got != "before" {
		t.Errorf("restored PVC reads %q, want the snapshot's %q", got, "before")
	}
	if got := readFile(t, restored, "golden.txt"); strings.TrimSpace(got) != goldenText {
		t.Errorf("restored PVC lost the golden image's file: %q", got)
	}
	_, cloned := claim(t, "snap-clone", "basalt-golden", "  dataSource: {kind: PersistentVolumeClaim, name: snap-src}\n", "")
	if got := readFile(t, cloned, "state.txt"); got != "after" {
		t.Errorf("cloned PVC reads %q, want the source's current %q", got, "after")
	}

	// The source PVC is deleted while its snapshot exists: a second restore works.
	deletePods(t, "pod-snap-src")
	kubectl(t, "delete", "pvc", "snap-src")
	eventually(t, "source PV deleted", 3*time.Minute, func() string {
		if out := kubectl(t, "get", "pv", "--ignore-not-found", "-o", "name"); strings.Contains(out, srcPV) {
			return "still there"
		}
		return ""
	})
	_, restored2 := claim(t, "snap-restored-2", "basalt-golden", fromSnapshotSource("snap-1"), "")
	if got := readFile(t, restored2, "state.txt"); got != "before" {
		t.Errorf("restore after the source was deleted reads %q, want %q", got, "before")
	}

	// A VolumeGroupSnapshot of two PVCs on one backend; both members restore.
	kubectlIn(t, `apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: basalt-one}
provisioner: rbd.basalt.dev
parameters: {image: images/golden@v1, backend: a-one}
volumeBindingMode: WaitForFirstConsumer
`, "apply", "-f", "-")
	_, g1 := claim(t, "grp-1", "basalt-one", "", "app: grouped")
	_, g2 := claim(t, "grp-2", "basalt-one", "", "app: grouped")
	writeSynced(t, g1, "member.txt", "one")
	writeSynced(t, g2, "member.txt", "two")
	kubectlIn(t, `apiVersion: groupsnapshot.storage.k8s.io/v1beta2
kind: VolumeGroupSnapshot
metadata: {name: grp-snap}
spec:
  volumeGroupSnapshotClassName: basalt-group-snapshots
  source: {selector: {matchLabels: {app: grouped}}}
`, "apply", "-f", "-")
	waitSnapshotReady(t, "volumegroupsnapshot", "grp-snap")
	writeSynced(t, g1, "member.txt", "changed")
	writeSynced(t, g2, "member.txt", "changed")
	members := map[string]string{} // member VolumeSnapshot -> its source PVC
	eventually(t, "member VolumeSnapshots", 2*time.Minute, func() string {
		for _, s := range get(jsonOf(t, "get", "volumesnapshots"), "items").([]any) {
			if str(s, "status", "volumeGroupSnapshotName") == "grp-snap" && get(s, "status", "readyToUse") == true {
				members[str(s, "metadata", "name")] = str(s, "spec", "source", "persistentVolumeClaimName")
			}
		}
		if len(members) != 2 {
			return fmt.Sprintf("%d ready members", len(members))
		}
		return ""
	})
	want := map[string]string{"grp-1": "one", "grp-2": "two"}
	i := 0
	var restoredPods []string
	for snapName, pvc := range members {
		i++
		name := fmt.Sprintf("grp-restored-%d", i)
		_, dir := claim(t, name, "basalt-golden", fromSnapshotSource(snapName), "")
		restoredPods = append(restoredPods, "pod-"+name)
		if got := readFile(t, dir, "member.txt"); got != want[pvc] {
			t.Errorf("member of %s restores to %q, want %q", pvc, got, want[pvc])
		}
	}

	// Everything deleted leaves nothing in Ceph.
	deletePods(t, append(restoredPods, "pod-snap-restored", "pod-snap-clone", "pod-snap-restored-2", "pod-grp-1", "pod-grp-2")...)
	kubectl(t, "delete", "volumegroupsnapshot", "grp-snap")
	kubectl(t, "delete", "volumesnapshot", "snap-1")
	kubectl(t, "delete", "pvc", "--all")
	eventually(t, "every PV, snapshot content and image gone", 4*time.Minute, func() string {
		if out := strings.TrimSpace(kubectl(t, "get", "pv,volumesnapshotcontents,volumegroupsnapshotcontents", "--ignore-not-found", "-o", "name")); out != "" {
			return out
		}
		if imgs := basaltImages(t); len(imgs) > 0 {
			return fmt.Sprint(imgs)
		}
		for _, p := range []string{"volumes-a", "volumes-b"} {
			if out := strings.TrimSpace(rbd(t, "trash", "ls", p) + rbd(t, "group", "ls", p)); out != "" {
				return p + ": " + out
			}
		}
		if out := strings.TrimSpace(mustBasalt(t, "snapshots", "-o", "json")); out != "[]" {
			return "snapshot records: " + out
		}
		return ""
	})
}
