package kubernetes

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// inPod runs a shell command in a pod's (only) container through
// containerd, as `kubectl exec` would without the kubelet's streaming
// server (which listens on the node's address, not loopback).
func inPod(t *testing.T, pod, script string) (string, error) {
	t.Helper()
	id := strings.TrimPrefix(str(jsonOf(t, "get", "pod", pod), "status", "containerStatuses", 0, "containerID"), "containerd://")
	if id == "" {
		return "", fmt.Errorf("pod %s has no running container", pod)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return sh(ctx, nil, filepath.Join(env["BIN"], "ctr"), "-a", filepath.Join(env["E2E"], "containerd", "containerd.sock"), "-n", "k8s.io",
		"tasks", "exec", "--exec-id", fmt.Sprintf("e2e-%d", time.Now().UnixNano()), id, "sh", "-c", script)
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
	if out, err := inPod(t, "restart-app", "echo before > /data/restart.txt && sync && cat /data/golden.txt"); err != nil || !strings.Contains(out, goldenText) {
		t.Fatalf("the workload cannot use its volume: %q %v", out, err)
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
	out, err := inPod(t, "restart-app", "cat /data/restart.txt && echo after >> /data/restart.txt && sync && cat /data/restart.txt")
	if err != nil || out != "before\nbefore\nafter\n" {
		t.Fatalf("after the node plugin restarted, the workload's volume answers %q (%v)", out, err)
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
