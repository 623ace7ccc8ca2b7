package kubernetes

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// nullDriver is the name of bench-k8s's control: tools/nullcsi, a CSI
// driver that does no storage work, deployed beside Basalt with Basalt's
// own sidecars, flags, service accounts and CSIDriver settings.
const nullDriver = "null.basalt.dev"

// deployNullDriver deploys the control from Basalt's live objects, so that
// whatever deploy/kubernetes sets (sidecar versions, worker threads, API
// rates, timeouts, attachRequired) is what the control runs with too: the
// controller Deployment keeps only csi-provisioner and csi-attacher (the
// control has no snapshots or expansion), the node DaemonSet only the
// registrar, and basalt-csi is replaced by nullcsi in both. It returns a
// function that removes it all.
func deployNullDriver(t *testing.T) func() {
	t.Helper()
	const ns = "basalt-system"
	drv := jsonOf(t, "get", "csidriver", "rbd.basalt.dev")
	drv["metadata"] = map[string]any{"name": nullDriver}

	ctrl := jsonOf(t, "get", "deployment", "-n", ns, "basalt-controller")
	rename(ctrl, "null-controller")
	ctrlPod := get(ctrl, "spec", "template", "spec").(map[string]any)
	delete(ctrlPod, "affinity") // it names Basalt's pods
	ctrlPod["containers"] = append([]any{nullContainer(ctrlPod, "--endpoint=unix:///csi/csi.sock", "--driver-name="+nullDriver)},
		keep(ctrlPod["containers"], "csi-provisioner", "csi-attacher")...)
	ctrlPod["volumes"] = keep(ctrlPod["volumes"], "socket-dir")

	node := jsonOf(t, "get", "daemonset", "-n", ns, "basalt-node")
	rename(node, "null-node")
	nodePod := get(node, "spec", "template", "spec").(map[string]any)
	// The registrar without its HTTP endpoint: on the host network its port
	// is Basalt's registrar's.
	reg := keep(nodePod["containers"], "node-driver-registrar")
	for _, c := range reg {
		c := c.(map[string]any)
		var args []any
		for _, a := range c["args"].([]any) {
			if s := a.(string); !strings.HasPrefix(s, "--http-endpoint") {
				args = append(args, strings.ReplaceAll(s, "rbd.basalt.dev", nullDriver))
			}
		}
		c["args"] = args
		delete(c, "ports")
		delete(c, "livenessProbe")
	}
	dataDir := "/var/lib/kubelet/plugins/" + nullDriver + "/data"
	nodePod["containers"] = append([]any{nullContainer(nodePod, "--endpoint=unix:///csi/csi.sock", "--driver-name="+nullDriver,
		"--node-id=$(NODE_NAME)", "--data-dir="+dataDir)}, reg...)
	nodePod["volumes"] = keep(nodePod["volumes"], "socket-dir", "registration-dir", "kubelet-dir")
	for _, v := range nodePod["volumes"].([]any) {
		if hp, ok := get(v, "hostPath").(map[string]any); ok {
			hp["path"] = strings.ReplaceAll(hp["path"].(string), "rbd.basalt.dev", nullDriver)
		}
	}

	var docs []string
	for _, o := range []map[string]any{drv, ctrl, node} {
		delete(o, "status")
		data, err := json.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, string(data))
	}
	kubectlIn(t, `{"apiVersion": "v1", "kind": "List", "items": [`+strings.Join(docs, ",")+`]}`, "apply", "-f", "-")
	remove := func() {
		kubectl(t, "delete", "-n", ns, "deployment/null-controller", "daemonset/null-node", "--ignore-not-found")
		kubectl(t, "delete", "csidriver", nullDriver, "--ignore-not-found")
	}
	eventually(t, "the control driver registered and its controller ready", 3*time.Minute, func() string {
		if d := jsonOf(t, "get", "deployment", "-n", ns, "null-controller"); get(d, "status", "readyReplicas") != get(d, "spec", "replicas") {
			return "controller not ready"
		}
		for _, d := range get(jsonOf(t, "get", "csinode"), "items").([]any) {
			drivers, _ := get(d, "spec", "drivers").([]any)
			for _, x := range drivers {
				if str(x, "name") == nullDriver {
					return ""
				}
			}
		}
		return "not registered with the kubelet"
	})
	return remove
}

// rename gives a cloned workload its own name and pod labels, keeping its
// namespace; the server-set metadata goes.
func rename(o map[string]any, name string) {
	ns := str(o, "metadata", "namespace")
	labels := map[string]any{"app.kubernetes.io/name": name}
	o["metadata"] = map[string]any{"name": name, "namespace": ns, "labels": labels}
	spec := o["spec"].(map[string]any)
	spec["selector"] = map[string]any{"matchLabels": labels}
	get(spec, "template", "metadata").(map[string]any)["labels"] = labels
}

// nullContainer is nullcsi in place of the pod's basalt-csi container,
// with its environment, privileges and the mounts nullcsi uses.
func nullContainer(pod map[string]any, args ...string) map[string]any {
	var basalt map[string]any
	for _, c := range pod["containers"].([]any) {
		if str(c, "name") == "basalt-csi" {
			basalt = c.(map[string]any)
		}
	}
	c := map[string]any{"name": "nullcsi", "image": "localhost/nullcsi:e2e", "imagePullPolicy": "IfNotPresent", "args": args}
	for _, k := range []string{"env", "securityContext"} {
		if v, ok := basalt[k]; ok {
			c[k] = v
		}
	}
	c["volumeMounts"] = keep(basalt["volumeMounts"], "socket-dir", "kubelet-dir")
	return c
}

// keep returns the elements of list (containers, volumes, mounts) with
// one of the names, in order.
func keep(list any, names ...string) []any {
	var out []any
	for _, x := range list.([]any) {
		for _, n := range names {
			if str(x, "name") == n {
				out = append(out, x)
			}
		}
	}
	return out
}
