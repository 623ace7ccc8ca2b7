// Package kubernetes is Basalt's end-to-end test on a real Kubernetes
// control plane, kubelet and containerd built from Go modules, with real
// Ceph and Basalt deployed from deploy/kubernetes as pods: PVCs from a
// golden image through the real csi-provisioner and csi-attacher, staged and
// published by the kubelet, used by real workload containers.
package kubernetes

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

var (
	repoRoot = func() string {
		wd, _ := os.Getwd()
		return filepath.Clean(filepath.Join(wd, "..", "..", ".."))
	}()
	env = map[string]string{}
)

func sh(ctx context.Context, extraEnv []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), extraEnv...)
	out, err := cmd.Output()
	if err != nil {
		stderr := ""
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		return string(out), fmt.Errorf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr)
	}
	return string(out), nil
}

func parseEnv(out string) {
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			env[k] = v
		}
	}
}

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 80*time.Minute)
	defer cancel()
	start := time.Now()
	// The cluster part of the tools: the suite part (e2e.test) may still be
	// building in the background; TestUpstreamStorage waits for it.
	out, err := sh(ctx, []string{"GOFLAGS="}, filepath.Join(repoRoot, "test/e2e/kubernetes/build-tools.sh"), "cluster")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	parseEnv(out)
	fmt.Fprintf(os.Stderr, "e2e: tools ready in %v (%s)\n", time.Since(start).Round(time.Second), env["BIN"])
	// The node's network first: Ceph listens on the node's address, where the
	// controller's pods (on the pod network) reach it.
	k8s := filepath.Join(repoRoot, "test/e2e/kubernetes/cluster.sh")
	out, err = sh(ctx, nil, k8s, "net")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	parseEnv(out)
	cluster := filepath.Join(repoRoot, "test/ceph-cluster.sh")
	out, err = sh(ctx, []string{"BASALT_CEPH_ADDR=" + env["NODE_IP"]}, cluster, "start", "e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _, _ = sh(context.Background(), nil, cluster, "stop", "e2e") }()
	parseEnv(out)
	for _, p := range []string{"volumes-a", "volumes-b", "images"} {
		if _, err := sh(ctx, nil, cluster, "create-pool", "e2e", p); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	if _, err := sh(ctx, nil, filepath.Join(repoRoot, "test/golden-image.sh"), env["CEPH_CONF"], "images", "golden", "v1", "64", goldenText); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	out, err = sh(ctx, []string{"BIN=" + env["BIN"], "CEPH_CONF=" + env["CEPH_CONF"], "CEPH_KEYRING=" + env["CEPH_KEYRING"]}, k8s, "start")
	defer func() { _, _ = sh(context.Background(), []string{"BIN=" + env["BIN"]}, k8s, "stop") }()
	if err != nil {
		fmt.Fprintln(os.Stderr, err, "\nlogs in _output/e2e/logs")
		return 1
	}
	parseEnv(out)
	fmt.Fprintf(os.Stderr, "e2e: Ceph, Kubernetes and Basalt up in %v\n", time.Since(start).Round(time.Second))
	return m.Run()
}

const goldenText = "hello from the basalt golden image"

func kubectl(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := sh(ctx, nil, filepath.Join(env["BIN"], "kubectl"), append([]string{"--kubeconfig", env["KUBECONFIG"]}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func kubectlIn(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(env["BIN"], "kubectl"), append([]string{"--kubeconfig", env["KUBECONFIG"]}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// eventually polls f until it returns "" (success) or the deadline passes.
func eventually(t *testing.T, what string, timeout time.Duration, f func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		if last = f(); last == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %s", what, timeout, last)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func jsonOf(t *testing.T, args ...string) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal([]byte(kubectl(t, append(args, "-o", "json")...)), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func get(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, _ := v.(map[string]any)
			v = m[k]
		case int:
			a, _ := v.([]any)
			if k >= len(a) {
				return nil
			}
			v = a[k]
		}
	}
	return v
}

func str(v any, path ...any) string { s, _ := get(v, path...).(string); return s }

func rbd(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := sh(ctx, nil, "rbd", append([]string{"-c", env["CEPH_CONF"]}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func basaltImages(t *testing.T) []string {
	var imgs []string
	for _, p := range []string{"volumes-a", "volumes-b"} {
		for _, l := range strings.Fields(rbd(t, "ls", p)) {
			if strings.HasPrefix(l, "basalt-") {
				imgs = append(imgs, p+"/"+l)
			}
		}
	}
	return imgs
}

// podVolumeDir is where the kubelet mounted a pod's CSI volume on this host.
func podVolumeDir(t *testing.T, pod, pv string) string {
	uid := str(jsonOf(t, "get", "pod", pod), "metadata", "uid")
	return filepath.Join(env["KUBELET_ROOT"], "pods", uid, "volumes", "kubernetes.io~csi", pv, "mount")
}

// podYAML is a workload pod that reads the golden file and writes one of its
// own through the claim.
func podYAML(name, claim string) string {
	return workloadPodYAML(name, claim, "", "cat /data/golden.txt && echo hi > /data/pod.txt")
}

// workloadPodYAML is a pod (with labels, "" for none, as a YAML flow map's
// entries) that runs work on its claim at /data, then sleeps. Its shell ends
// on SIGTERM, as a well-behaved application does; as PID 1 without a
// handler it would ignore it, and every deletion would wait out the 30 s
// grace period.
func workloadPodYAML(name, claim, labels, work string) string {
	meta := "name: " + name
	if labels != "" {
		meta += ", labels: {" + labels + "}"
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {%s}
spec:
  nodeSelector: {kubernetes.io/hostname: e2e-node}
  containers:
  - name: app
    image: busybox:1.36
    command: ["sh", "-c", "trap 'exit 0' TERM; %s && sleep 3600 & wait"]
    volumeMounts: [{name: data, mountPath: /data}]
  volumes:
  - name: data
    persistentVolumeClaim: {claimName: %s}
`, meta, work, claim)
}

func waitPodRunning(t *testing.T, pod string) {
	eventually(t, "pod "+pod+" Running", 3*time.Minute, func() string {
		p := jsonOf(t, "get", "pod", pod)
		if phase := str(p, "status", "phase"); phase != "Running" {
			return "phase " + phase
		}
		return ""
	})
}

// releaseClaim deletes a pod and its claim, and waits until the claim's
// RBD image (by name, in whichever pool) is gone.
func releaseClaim(t *testing.T, pod, claim, image string) {
	t.Helper()
	kubectl(t, "delete", "pod", pod, "--wait=false")
	waitPodGone(t, pod)
	kubectl(t, "delete", "pvc", claim)
	eventually(t, "image "+image+" deleted", 3*time.Minute, func() string {
		for _, img := range basaltImages(t) {
			if strings.HasSuffix(img, "/"+image) {
				return "still there: " + img
			}
		}
		return ""
	})
}

func waitPodGone(t *testing.T, pod string) {
	eventually(t, "pod "+pod+" deleted", 3*time.Minute, func() string {
		if out := kubectl(t, "get", "pods", "--ignore-not-found", "-o", "name"); strings.Contains(out, "pod/"+pod+"\n") {
			return "still there"
		}
		return ""
	})
}

func mountedUnder(prefix string) []string {
	data, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && strings.HasPrefix(f[4], prefix) {
			out = append(out, f[4])
		}
	}
	return out
}

func TestPVCFromGoldenImageLifecycle(t *testing.T) {
	// 1. StorageClass from the examples (WaitForFirstConsumer, zone-a), a PVC, a pod.
	kubectl(t, "apply", "-f", filepath.Join(repoRoot, "examples/kubernetes/storageclass.yaml"))
	sc := jsonOf(t, "get", "storageclass", "basalt-golden")
	if str(sc, "volumeBindingMode") != "WaitForFirstConsumer" || str(sc, "parameters", "image") != "images/golden@v1" {
		t.Fatalf("storage class from the examples: %v", sc)
	}
	kubectlIn(t, `apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: golden-data}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: basalt-golden
  resources: {requests: {storage: 1Gi}}
`, "apply", "-f", "-")
	time.Sleep(2 * time.Second)
	if phase := str(jsonOf(t, "get", "pvc", "golden-data"), "status", "phase"); phase != "Pending" {
		t.Fatalf("WaitForFirstConsumer PVC is %s before any pod", phase)
	}
	kubectlIn(t, podYAML("app-1", "golden-data"), "apply", "-f", "-")
	var pv string
	eventually(t, "PVC bound", 2*time.Minute, func() string {
		p := jsonOf(t, "get", "pvc", "golden-data")
		if str(p, "status", "phase") != "Bound" {
			return "phase " + str(p, "status", "phase")
		}
		pv = str(p, "spec", "volumeName")
		return ""
	})
	pvObj := jsonOf(t, "get", "pv", pv)
	terms := get(pvObj, "spec", "nodeAffinity", "required", "nodeSelectorTerms", 0, "matchExpressions", 0)
	if str(terms, "key") != "topology.rbd.basalt.dev/zone" || str(terms, "values", 0) != "zone-a" {
		t.Fatalf("PV node affinity %v, want topology.rbd.basalt.dev/zone in [zone-a]", terms)
	}
	volID := str(pvObj, "spec", "csi", "volumeHandle")
	backend := str(pvObj, "spec", "csi", "volumeAttributes", "backend")
	if !strings.HasPrefix(volID, "bsl1.") || (backend != "a-one" && backend != "a-two") {
		t.Fatalf("PV csi source %v", get(pvObj, "spec", "csi"))
	}

	// 2. Attached (ControllerPublish), staged and published (pod Running).
	eventually(t, "VolumeAttachment attached", 2*time.Minute, func() string {
		for _, va := range get(jsonOf(t, "get", "volumeattachments"), "items").([]any) {
			if str(va, "spec", "source", "persistentVolumeName") == pv {
				if get(va, "status", "attached") == true {
					return ""
				}
				return "not attached yet"
			}
		}
		return "no VolumeAttachment"
	})
	waitPodRunning(t, "app-1")
	dir := podVolumeDir(t, "app-1", pv)
	got, err := os.ReadFile(filepath.Join(dir, "golden.txt"))
	if err != nil || strings.TrimSpace(string(got)) != goldenText {
		t.Fatalf("golden.txt through the pod's mount %s: %q %v", dir, got, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "written-by-test.txt"), []byte("e2e\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	// 3. Pod deleted: unpublish, unstage, VolumeAttachment gone. A second pod finds the file.
	kubectl(t, "delete", "pod", "app-1", "--wait=false")
	waitPodGone(t, "app-1")
	eventually(t, "volume unmounted from the node", 2*time.Minute, func() string {
		if m := mountedUnder(filepath.Join(env["KUBELET_ROOT"], "plugins", "kubernetes.io", "csi")); len(m) > 0 {
			return fmt.Sprint(m)
		}
		return ""
	})
	eventually(t, "VolumeAttachment removed", 3*time.Minute, func() string {
		if strings.Contains(kubectl(t, "get", "volumeattachments", "-o", "yaml"), "persistentVolumeName: "+pv) {
			return "still there"
		}
		return ""
	})
	kubectlIn(t, podYAML("app-2", "golden-data"), "apply", "-f", "-")
	waitPodRunning(t, "app-2")
	if got, err := os.ReadFile(filepath.Join(podVolumeDir(t, "app-2", pv), "written-by-test.txt")); err != nil || string(got) != "e2e\n" {
		t.Fatalf("file written through the first pod, read through the second: %q %v", got, err)
	}

	// 4. Delete everything: nothing may remain.
	kubectl(t, "delete", "pod", "app-2", "--wait=false")
	waitPodGone(t, "app-2")
	kubectl(t, "delete", "pvc", "golden-data")
	eventually(t, "PV deleted", 3*time.Minute, func() string {
		if out := kubectl(t, "get", "pv", "--ignore-not-found", "-o", "name"); strings.Contains(out, pv) {
			return "still there"
		}
		return ""
	})
	eventually(t, "RBD image removed", time.Minute, func() string {
		if imgs := basaltImages(t); len(imgs) > 0 {
			return fmt.Sprint(imgs)
		}
		return ""
	})
	if out := mustBasalt(t, "attachments", "-o", "json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("attachment records left: %s", out)
	}
	// Basalt's mounts: staging and publish paths of CSI volumes, and the
	// node plugin's FUSE mounts under its state directory. (The kubelet's
	// own root mount, the shared bind mount of the state directory itself
	// and the deployed pods' secret volumes are not the volume's.)
	var left []string
	for _, m := range mountedUnder(env["E2E"] + "/") {
		if strings.Contains(m, "kubernetes.io~csi") || strings.Contains(m, "/plugins/kubernetes.io/csi/") || strings.HasPrefix(m, env["NODE_STATE"]+"/") {
			left = append(left, m)
		}
	}
	if len(left) > 0 {
		t.Fatalf("mounts left: %v", left)
	}
	loops, _ := exec.Command("losetup", "--list", "--noheadings", "--output", "BACK-FILE").Output()
	if strings.Contains(string(loops), env["NODE_STATE"]) {
		t.Fatalf("loop devices left: %s", loops)
	}
	if out, _ := exec.Command("pgrep", "-f", "rbd-fuse.*"+env["NODE_STATE"]).Output(); len(out) > 0 {
		t.Fatalf("rbd-fuse daemons left: %s", out)
	}
}

func mustBasalt(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(repoRoot, "bin/basalt-csi"), append(args, "--config", filepath.Join(env["E2E"], "basalt.yaml"))...).Output()
	if err != nil {
		t.Fatalf("basalt-csi %v: %v", args, err)
	}
	return string(out)
}

func TestTenPVCsSpreadOverBackends(t *testing.T) {
	// Immediate binding: the provisioner creates at once, for the node's zone.
	kubectlIn(t, `apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: basalt-immediate}
provisioner: rbd.basalt.dev
parameters: {image: images/golden@v1}
volumeBindingMode: Immediate
reclaimPolicy: Delete
`, "apply", "-f", "-")
	var b strings.Builder
	for i := 0; i < 10; i++ {
		fmt.Fprintf(&b, `---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: burst-%d}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: basalt-immediate
  resources: {requests: {storage: 2Gi}}
`, i)
	}
	kubectlIn(t, b.String(), "apply", "-f", "-")
	perBackend := map[string]int{}
	eventually(t, "ten PVCs bound", 3*time.Minute, func() string {
		bound := 0
		for _, p := range get(jsonOf(t, "get", "pvc"), "items").([]any) {
			if strings.HasPrefix(str(p, "metadata", "name"), "burst-") && str(p, "status", "phase") == "Bound" {
				bound++
			}
		}
		if bound < 10 {
			return strconv.Itoa(bound) + " of 10 bound"
		}
		return ""
	})
	for _, pv := range get(jsonOf(t, "get", "pv"), "items").([]any) {
		if strings.HasPrefix(str(pv, "spec", "claimRef", "name"), "burst-") {
			perBackend[str(pv, "spec", "csi", "volumeAttributes", "backend")]++
		}
	}
	// Two equal backends in zone-a: the scheduler charges each placement at
	// once, so ten equal requests alternate. A capacity refresh landing
	// mid-burst replaces local charges by the index, which may not list the
	// creates still in flight, so allow a difference of two, not more.
	diff := perBackend["a-one"] - perBackend["a-two"]
	if perBackend["a-one"]+perBackend["a-two"] != 10 || diff > 2 || diff < -2 {
		t.Fatalf("placements %v, want ten spread over a-one and a-two", perBackend)
	}
	t.Logf("placements: %v", perBackend)
	if n := len(basaltImages(t)); n != 10 {
		t.Fatalf("%d images for 10 PVCs", n)
	}
	// CSIStorageCapacity for the node's zone, from GetCapacity. The
	// provisioner publishes it for late-binding classes only (the scheduler
	// uses it to place pods with WaitForFirstConsumer claims): basalt-golden.
	eventually(t, "CSIStorageCapacity for zone-a", 2*time.Minute, func() string {
		var zones []string
		for _, c := range get(jsonOf(t, "-n", "basalt-system", "get", "csistoragecapacities"), "items").([]any) {
			if str(c, "storageClassName") == "basalt-golden" && str(c, "capacity") != "" && str(c, "capacity") != "0" {
				zones = append(zones, str(c, "nodeTopology", "matchLabels", "topology.rbd.basalt.dev/zone"))
			}
		}
		sort.Strings(zones)
		if strings.Join(zones, ",") != "zone-a" {
			return fmt.Sprintf("capacities for zones %v", zones)
		}
		return ""
	})
	names := make([]string, 10)
	for i := range names {
		names[i] = "burst-" + strconv.Itoa(i)
	}
	kubectl(t, append([]string{"delete", "pvc"}, names...)...)
	eventually(t, "ten volumes deleted", 3*time.Minute, func() string {
		if imgs := basaltImages(t); len(imgs) > 0 {
			return fmt.Sprintf("%d images left", len(imgs))
		}
		return ""
	})
}
