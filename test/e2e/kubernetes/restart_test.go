package kubernetes

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// inPod runs a shell command in a pod's (only) container: `kubectl exec`,
// through the API server and the kubelet's streaming server.
func inPod(t *testing.T, pod, script string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return sh(ctx, nil, filepath.Join(env["BIN"], "kubectl"), "--kubeconfig", env["KUBECONFIG"], "exec", pod, "--", "sh", "-c", script)
}

// TestBasaltRunsInContainers: the CRI (crictl, as an admin would look)
// shows basalt-csi and every sidecar as running containers of the
// controller's and the node plugin's pods.
func TestBasaltRunsInContainers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := sh(ctx, nil, filepath.Join(env["BIN"], "crictl"), "--runtime-endpoint", "unix://"+filepath.Join(env["E2E"], "containerd", "containerd.sock"),
		"ps", "--state", "running", "--namespace", "basalt-system", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var ps struct {
		Containers []struct {
			Metadata struct{ Name string }
			Labels   map[string]string
		}
	}
	if err := json.Unmarshal([]byte(out), &ps); err != nil {
		t.Fatal(err)
	}
	var running []string // pod/container
	for _, c := range ps.Containers {
		running = append(running, c.Labels["io.kubernetes.pod.name"]+"/"+c.Metadata.Name)
	}
	t.Logf("running containers: %v", running)
	want := map[string][]string{
		"basalt-controller-": {"basalt-csi", "csi-provisioner", "csi-attacher", "csi-snapshotter", "csi-resizer", "liveness-probe"},
		"basalt-node-":       {"basalt-csi", "node-driver-registrar", "liveness-probe"},
	}
	for pod, containers := range want {
		for _, c := range containers {
			found := false
			for _, r := range running {
				found = found || (strings.HasPrefix(r, pod) && strings.HasSuffix(r, "/"+c))
			}
			if !found {
				t.Errorf("no running container %s in a %s* pod", c, pod)
			}
		}
	}
}

// The node plugin's pod is deleted while a workload pod uses a volume; the
// DaemonSet makes a new one. The workload's own mount, inside its
// container, keeps working throughout: the rbd-fuse daemon serving the
// volume runs outside the plugin's cgroup and outlives it (a plugin restart
// is a routine event: an upgrade, an eviction, a crash).
func TestNodePluginRestartKeepsWorkload(t *testing.T) {
	kubectl(t, "apply", "-f", filepath.Join(repoRoot, "examples/kubernetes/storageclass.yaml"))
	kubectlIn(t, `apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: restart-data}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: basalt-golden
  resources: {requests: {storage: 256Mi}}
`, "apply", "-f", "-")
	kubectlIn(t, podYAML("restart-app", "restart-data"), "apply", "-f", "-")
	waitPodRunning(t, "restart-app")
	// Direct I/O, so that the page cache cannot answer for a dead device.
	const write = "dd if=/dev/urandom of=/data/%s bs=64k count=16 oflag=direct conv=fsync 2>/dev/null && md5sum /data/%s | cut -d' ' -f1"
	const read = "dd if=/data/%s bs=64k iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1"
	before, err := inPod(t, "restart-app", fmt.Sprintf(write, "before", "before"))
	if err != nil || len(strings.TrimSpace(before)) != 32 {
		t.Fatalf("the workload cannot write to its volume: %q %v", before, err)
	}

	old := strings.TrimSpace(kubectl(t, "-n", "basalt-system", "get", "pods", "-l", "app.kubernetes.io/name=basalt-node", "-o", "jsonpath={.items[0].metadata.name}"))
	kubectl(t, "-n", "basalt-system", "delete", "pod", old, "--wait=true", "--timeout=2m")
	eventually(t, "a new node plugin pod ready", 3*time.Minute, func() string {
		pods := get(jsonOf(t, "-n", "basalt-system", "get", "pods", "-l", "app.kubernetes.io/name=basalt-node"), "items").([]any)
		if len(pods) != 1 || str(pods[0], "metadata", "name") == old {
			return fmt.Sprintf("%d pods", len(pods))
		}
		for _, c := range get(pods[0], "status", "containerStatuses").([]any) {
			if get(c, "ready") != true {
				return str(c, "name") + " not ready"
			}
		}
		return ""
	})
	// The same mount in the workload's container, read and written.
	if got, err := inPod(t, "restart-app", fmt.Sprintf(read, "before")); err != nil || got != before {
		t.Fatalf("after the node plugin restarted, the workload reads %q (%v), want %q", got, err, before)
	}
	if out, err := inPod(t, "restart-app", fmt.Sprintf(write, "after", "after")); err != nil || len(strings.TrimSpace(out)) != 32 {
		t.Fatalf("after the node plugin restarted, the workload cannot write: %q %v", out, err)
	}

	kubectl(t, "delete", "pod", "restart-app", "--wait=false")
	waitPodGone(t, "restart-app")
	kubectl(t, "delete", "pvc", "restart-data")
	eventually(t, "the volume unstaged and its rbd-fuse gone", 3*time.Minute, func() string {
		if out, _ := sh(context.Background(), nil, "pgrep", "-f", "rbd-fuse.*"+env["NODE_STATE"]); strings.TrimSpace(out) != "" {
			return "rbd-fuse still runs: " + out
		}
		return ""
	})
}
