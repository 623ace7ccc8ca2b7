package kubernetes

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestKubernetesScale is `make bench-k8s`, a benchmark and not a test of
// `make test`: it runs only when BASALT_BENCH_K8S_N is set. N PVCs from the
// golden image with Immediate binding, all at once, then pods using the
// first BASALT_BENCH_K8S_PODS of them (default min(N, 30)); it measures,
// from the moment each batch was applied, when every PVC was Bound, every
// VolumeAttachment attached and every pod Running (its volume staged and
// published), per object (p50, p90) and for all, and writes
// _output/bench-k8s.json. Timings are observed by polling the API every
// 250 ms, so each is up to 250 ms late. It asserts nothing about timings.
func TestKubernetesScale(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("BASALT_BENCH_K8S_N"))
	if n <= 0 {
		t.Skip("a benchmark, run by make bench-k8s (BASALT_BENCH_K8S_N=number of PVCs)")
	}
	pods := min(n, 30)
	if v, err := strconv.Atoi(os.Getenv("BASALT_BENCH_K8S_PODS")); err == nil && v >= 0 {
		pods = min(v, n)
	}
	kubectlIn(t, `apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: basalt-scale}
provisioner: rbd.basalt.dev
parameters: {image: images/golden@v1}
volumeBindingMode: Immediate
reclaimPolicy: Delete
`, "apply", "-f", "-")
	defer kubectl(t, "delete", "storageclass", "basalt-scale", "--ignore-not-found")

	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, `---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: scale-%d, labels: {bench: scale}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: basalt-scale
  resources: {requests: {storage: 1Gi}}
`, i)
	}
	defer cleanUpScale(t)
	start := time.Now()
	kubectlIn(t, b.String(), "apply", "-f", "-")
	bound := observe(t, start, tracker{"PVCs bound", n, func() map[string]bool {
		out := map[string]bool{}
		for _, p := range items(t, "pvc", "-l", "bench=scale") {
			if str(p, "status", "phase") == "Bound" {
				out[str(p, "metadata", "name")] = true
			}
		}
		return out
	}})
	res := benchK8s{N: n, Pods: pods, Bound: bound[0]}

	if pods > 0 {
		b.Reset()
		claimPV := map[string]string{}
		for _, p := range items(t, "pvc", "-l", "bench=scale") {
			claimPV[str(p, "metadata", "name")] = str(p, "spec", "volumeName")
		}
		wanted := map[string]bool{}
		for i := range pods {
			b.WriteString("---\n" + strings.Replace(podYAML(fmt.Sprintf("scale-%d", i), fmt.Sprintf("scale-%d", i)),
				"metadata: {name:", "metadata: {labels: {bench: scale}, name:", 1))
			wanted[claimPV[fmt.Sprintf("scale-%d", i)]] = true
		}
		start = time.Now()
		kubectlIn(t, b.String(), "apply", "-f", "-")
		got := observe(t, start, tracker{"volumes attached", pods, func() map[string]bool {
			out := map[string]bool{}
			for _, va := range items(t, "volumeattachment") {
				if pv := str(va, "spec", "source", "persistentVolumeName"); wanted[pv] && get(va, "status", "attached") == true {
					out[pv] = true
				}
			}
			return out
		}}, tracker{"pods running", pods, func() map[string]bool {
			out := map[string]bool{}
			for _, p := range items(t, "pod", "-l", "bench=scale") {
				if str(p, "status", "phase") == "Running" {
					out[str(p, "metadata", "name")] = true
				}
			}
			return out
		}})
		res.Attached, res.Running = got[0], got[1]
	}
	// Basalt's own share: its CreateVolume and ControllerPublishVolume
	// times, from the controller's request log.
	logs := kubectl(t, "logs", "-n", "basalt-system", "-l", "app.kubernetes.io/name=basalt-controller", "-c", "basalt-csi", "--tail=-1")
	res.CreateVolume = callTimes(logs, "CreateVolume")
	res.ControllerPublish = callTimes(logs, "ControllerPublishVolume")
	t.Logf("Basalt: CreateVolume %+v, ControllerPublishVolume %+v", res.CreateVolume, res.ControllerPublish)
	for _, a := range []string{"csi-provisioner", "csi-attacher"} {
		res.Flags = append(res.Flags, sidecarFlags(t, a)...)
	}
	data, _ := json.MarshalIndent(res, "", "  ")
	if err := os.WriteFile(filepath.Join(repoRoot, "_output", "bench-k8s.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("bench-k8s: %s", data)
}

type phase struct {
	Count int     `json:"count"`
	AllMs float64 `json:"all_ms"` // until the last one
	P50Ms float64 `json:"p50_ms"`
	P90Ms float64 `json:"p90_ms"`
}

type benchK8s struct {
	N        int   `json:"pvcs"`
	Pods     int   `json:"pods"`
	Bound    phase `json:"bound"`
	Attached phase `json:"attached"`
	Running  phase `json:"running"`
	// The driver's calls, as its request log timed them.
	CreateVolume      phase    `json:"basalt_create_volume"`
	ControllerPublish phase    `json:"basalt_controller_publish"`
	Flags             []string `json:"sidecar_flags"`
}

// callTimes summarises the durations of method's successful calls in a
// Basalt request log ("msg=done method=M ... took=D"); AllMs is their sum.
func callTimes(log, method string) phase {
	var ms []float64
	for _, l := range strings.Split(log, "\n") {
		if !strings.Contains(l, "msg=done method="+method+" ") {
			continue
		}
		_, rest, ok := strings.Cut(l, " took=")
		if !ok {
			continue
		}
		d, err := time.ParseDuration(strings.Fields(rest)[0])
		if err == nil {
			ms = append(ms, float64(d.Microseconds())/1000)
		}
	}
	if len(ms) == 0 {
		return phase{}
	}
	sort.Float64s(ms)
	p := phase{Count: len(ms), P50Ms: ms[(len(ms)-1)/2], P90Ms: ms[(len(ms)*9-1)/10]}
	for _, v := range ms {
		p.AllMs += v
	}
	return p
}

// tracker is one phase observe follows: want objects, done lists those
// that reached it.
type tracker struct {
	what string
	want int
	done func() map[string]bool
}

// observe polls every tracker every 250 ms until each has its objects,
// recording when each object was first seen done, and summarises those
// times since start, per tracker.
func observe(t *testing.T, start time.Time, trackers ...tracker) []phase {
	t.Helper()
	seen := make([]map[string]time.Duration, len(trackers))
	for i := range seen {
		seen[i] = map[string]time.Duration{}
	}
	deadline := time.Now().Add(15 * time.Minute)
	for {
		complete := true
		for i, tr := range trackers {
			if len(seen[i]) >= tr.want {
				continue
			}
			for k := range tr.done() {
				if _, ok := seen[i][k]; !ok {
					seen[i][k] = time.Since(start)
				}
			}
			complete = complete && len(seen[i]) >= tr.want
		}
		if complete {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not done after 15 minutes: %v", seen)
		}
		time.Sleep(250 * time.Millisecond)
	}
	out := make([]phase, len(trackers))
	for i, tr := range trackers {
		var ms []float64
		for _, d := range seen[i] {
			ms = append(ms, float64(d.Milliseconds()))
		}
		sort.Float64s(ms)
		p := phase{Count: len(ms), AllMs: ms[len(ms)-1], P50Ms: ms[(len(ms)-1)/2], P90Ms: ms[(len(ms)*9-1)/10]}
		t.Logf("%s: %d in %.1f s (p50 %.1f s, p90 %.1f s)", tr.what, p.Count, p.AllMs/1000, p.P50Ms/1000, p.P90Ms/1000)
		out[i] = p
	}
	return out
}

func items(t *testing.T, args ...string) []any {
	v, _ := get(jsonOf(t, append([]string{"get"}, args...)...), "items").([]any)
	return v
}

// sidecarFlags lists the flags of a controller sidecar that bound its
// throughput (worker threads, API client rate), as deployed.
func sidecarFlags(t *testing.T, container string) []string {
	var out []string
	for _, d := range items(t, "deployment", "-A") {
		for _, c := range get(d, "spec", "template", "spec", "containers").([]any) {
			if str(c, "name") != container {
				continue
			}
			for _, a := range get(c, "args").([]any) {
				s, _ := a.(string)
				if strings.Contains(s, "worker") || strings.Contains(s, "qps") || strings.Contains(s, "burst") || strings.Contains(s, "timeout") {
					out = append(out, container+" "+s)
				}
			}
		}
	}
	return out
}

func cleanUpScale(t *testing.T) {
	kubectl(t, "delete", "pod", "-l", "bench=scale", "--wait=false")
	eventually(t, "scale pods gone", 10*time.Minute, func() string {
		if out := strings.TrimSpace(kubectl(t, "get", "pod", "-l", "bench=scale", "-o", "name")); out != "" {
			return out
		}
		return ""
	})
	kubectl(t, "delete", "pvc", "-l", "bench=scale", "--wait=false")
	eventually(t, "scale volumes gone", 10*time.Minute, func() string {
		if out := strings.TrimSpace(kubectl(t, "get", "pv", "-o", "name")); out != "" {
			return out
		}
		if imgs := basaltImages(t); len(imgs) > 0 {
			return fmt.Sprintf("%d images", len(imgs))
		}
		return ""
	})
}
