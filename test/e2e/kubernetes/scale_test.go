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
// `make test`: it runs only when BASALT_BENCH_K8S_N is set. Twice in one
// run, first for the control (nullcsi, a driver doing no storage work, with
// Basalt's own sidecars and flags: scale_control_test.go) and then for
// Basalt: N PVCs with Immediate binding, all at once, then pods using the
// first BASALT_BENCH_K8S_PODS of them (default min(N, 30)). It measures,
// from the moment each batch was applied, when every PVC was Bound, every
// VolumeAttachment attached and every pod Running (its volume published),
// per object (p50, p90) and for all, and writes _output/bench-k8s.json with
// Basalt's figures over the control's. Timings are observed by polling the
// API every 250 ms, so each is up to 250 ms late. It asserts nothing about
// timings.
func TestKubernetesScale(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("BASALT_BENCH_K8S_N"))
	if n <= 0 {
		t.Skip("a benchmark, run by make bench-k8s (BASALT_BENCH_K8S_N=number of PVCs)")
	}
	pods := min(n, 30)
	if v, err := strconv.Atoi(os.Getenv("BASALT_BENCH_K8S_PODS")); err == nil && v >= 0 {
		pods = min(v, n)
	}
	res := benchK8s{N: n, Pods: pods}
	removeControl := deployNullDriver(t)
	res.Control = scaleRun(t, nullDriver, "", n, pods)
	removeControl()
	res.Basalt = scaleRun(t, "rbd.basalt.dev", "image: images/golden@v1", n, pods)
	res.Ratio = map[string]float64{}
	for k, pair := range map[string][2]phase{"bound": {res.Basalt.Bound, res.Control.Bound},
		"attached": {res.Basalt.Attached, res.Control.Attached}, "running": {res.Basalt.Running, res.Control.Running}} {
		if pair[1].AllMs > 0 {
			res.Ratio[k+"_all"] = round2(pair[0].AllMs / pair[1].AllMs)
			res.Ratio[k+"_p50"] = round2(pair[0].P50Ms / pair[1].P50Ms)
		}
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

// scaleRun is one driver's run: a StorageClass of it with params, n PVCs,
// then pods on the first pods of them; all removed at the end.
func scaleRun(t *testing.T, driver, params string, n, pods int) scalePhases {
	t.Logf("== %s: %d PVCs, %d pods", driver, n, pods)
	kubectlIn(t, fmt.Sprintf(`apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: bench-scale}
provisioner: %s
parameters: {%s}
volumeBindingMode: Immediate
reclaimPolicy: Delete
`, driver, params), "apply", "-f", "-")
	defer kubectl(t, "delete", "storageclass", "bench-scale", "--ignore-not-found")

	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, `---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: scale-%d, labels: {bench: scale}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: bench-scale
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
	res := scalePhases{Bound: bound[0]}
	if pods == 0 {
		return res
	}
	b.Reset()
	claimPV := map[string]string{}
	for _, p := range items(t, "pvc", "-l", "bench=scale") {
		claimPV[str(p, "metadata", "name")] = str(p, "spec", "volumeName")
	}
	wanted := map[string]bool{}
	for i := range pods {
		b.WriteString("---\n" + scalePodYAML(fmt.Sprintf("scale-%d", i)))
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
	return res
}

// scalePodYAML is a pod that writes to its claim (of its own name); the
// same for both drivers, so it reads nothing a volume of the control would
// not have.
func scalePodYAML(name string) string {
	return workloadPodYAML(name, name, "bench: scale", "echo hi > /data/pod.txt")
}

func round2(v float64) float64 { return float64(int(v*100+0.5)) / 100 }

type phase struct {
	Count int       `json:"count"`
	AllMs float64   `json:"all_ms"` // until the last one
	P50Ms float64   `json:"p50_ms"`
	P90Ms float64   `json:"p90_ms"`
	Ms    []float64 `json:"ms,omitempty"` // each object's time, sorted
}

// scalePhases is one driver's run.
type scalePhases struct {
	Bound    phase `json:"bound"`
	Attached phase `json:"attached"`
	Running  phase `json:"running"`
}

type benchK8s struct {
	N       int         `json:"pvcs"`
	Pods    int         `json:"pods"`
	Control scalePhases `json:"control"` // nullcsi
	Basalt  scalePhases `json:"basalt"`
	// Basalt's over the control's: all_ms (until the last object) and p50.
	Ratio map[string]float64 `json:"ratio"`
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
		p := phase{Count: len(ms), AllMs: ms[len(ms)-1], P50Ms: ms[(len(ms)-1)/2], P90Ms: ms[(len(ms)*9-1)/10], Ms: ms}
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
