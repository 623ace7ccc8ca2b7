package kubernetes

import (
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrapeVia reads /metrics through the API server's proxy (path: a pod's
// or a Service's proxy subresource, without /metrics).
func scrapeVia(t *testing.T, path string) map[string]*dto.MetricFamily {
	t.Helper()
	body := kubectl(t, "get", "--raw", path+"/metrics")
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parsing %s/metrics: %v", path, err)
	}
	return fams
}

// sumOf adds the samples of name whose labels include want.
func sumOf(fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	total := 0.0
	for _, m := range fams[name].GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range want {
			match = match && have[k] == v
		}
		if match {
			total += m.GetCounter().GetValue() + m.GetGauge().GetValue() + float64(m.GetHistogram().GetSampleCount())
		}
	}
	return total
}

// TestMetricsAndRefusalEvent: the deployed metrics Services answer (the
// controller's through its Service and from each replica, the node plugin's
// through its headless Service), with the creates the earlier tests made
// counted; and a claim no backend can hold gets Basalt's one-sentence
// reason as its event, as `kubectl describe pvc` shows it.
func TestMetricsAndRefusalEvent(t *testing.T) {
	svc := "/api/v1/namespaces/basalt-system/services/"
	fams := scrapeVia(t, svc+"basalt-controller-metrics:metrics/proxy")
	for _, b := range []string{"a-one", "a-two"} {
		if v := sumOf(fams, "basalt_backend_up", map[string]string{"backend": b}); v != 1 {
			t.Errorf("basalt_backend_up{backend=%q} = %v through the Service, want 1", b, v)
		}
	}
	creates := 0.0
	pods := get(jsonOf(t, "-n", "basalt-system", "get", "pods", "-l", "app.kubernetes.io/name=basalt-controller"), "items").([]any)
	for _, p := range pods {
		f := scrapeVia(t, "/api/v1/namespaces/basalt-system/pods/"+str(p, "metadata", "name")+":9090/proxy")
		creates += sumOf(f, "basalt_csi_requests_total", map[string]string{"method": "CreateVolume", "code": "OK"})
	}
	if len(pods) != 2 || creates < 10 {
		t.Errorf("%d controller pods counted %v successful CreateVolume calls, want 2 pods and at least the 10 of the burst", len(pods), creates)
	}
	nodeFams := scrapeVia(t, svc+"basalt-node-metrics:metrics/proxy")
	if v := sumOf(nodeFams, "basalt_csi_requests_total", map[string]string{"method": "NodeStageVolume", "code": "OK"}); v < 1 {
		t.Errorf("the node plugin counted %v successful NodeStageVolume calls, want at least 1", v)
	}
	// The stage's filesystem probe (the staging mount itself is mount(2)).
	if v := sumOf(nodeFams, "basalt_node_command_duration_seconds", map[string]string{"command": "blkid"}); v < 1 {
		t.Errorf("the node plugin timed %v blkid commands, want at least 1", v)
	}
	// The controller's registry census sees the node plugin's heartbeat
	// (every 30 s) from inside its container.
	nodeName := str(get(jsonOf(t, "get", "nodes"), "items").([]any)[0], "metadata", "name")
	seen := false
	for _, m := range fams["basalt_node_last_seen_age_seconds"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "node" && l.GetValue() == nodeName {
				seen = true
				if age := m.GetGauge().GetValue(); age > 90 {
					t.Errorf("basalt_node_last_seen_age_seconds{node=%q} = %v, want a heartbeat within 90 s", nodeName, age)
				}
			}
		}
	}
	if !seen {
		t.Errorf("no basalt_node_last_seen_age_seconds{node=%q} through the controller's Service", nodeName)
	}

	kubectlIn(t, `apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: basalt-gold}
provisioner: rbd.basalt.dev
parameters: {capability.tier: gold}
volumeBindingMode: Immediate
reclaimPolicy: Delete
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: gold-data}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: basalt-gold
  resources: {requests: {storage: 1Gi}}
`, "apply", "-f", "-")
	defer kubectl(t, "delete", "pvc", "gold-data", "--wait=false")
	defer kubectl(t, "delete", "storageclass", "basalt-gold")
	var msg string
	eventually(t, "a ProvisioningFailed event on gold-data", 2*time.Minute, func() string {
		for _, e := range get(jsonOf(t, "get", "events", "--field-selector", "involvedObject.name=gold-data"), "items").([]any) {
			if str(e, "reason") == "ProvisioningFailed" {
				msg = str(e, "message")
				return ""
			}
		}
		return "no event yet"
	})
	t.Logf("event: %s", msg)
	// What the user reads: the code, and which backend failed which check.
	for _, want := range []string{"ResourceExhausted", "a-one", "a-two", "capabilities", "tier"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the event does not mention %q: %s", want, msg)
		}
	}
	rejected := 0.0
	for _, p := range pods {
		f := scrapeVia(t, "/api/v1/namespaces/basalt-system/pods/"+str(p, "metadata", "name")+":9090/proxy")
		rejected += sumOf(f, "basalt_scheduler_rejections_total", map[string]string{"filter": "capabilities"})
	}
	if rejected < 2 {
		t.Errorf("basalt_scheduler_rejections_total{filter=\"capabilities\"} = %v over the replicas, want at least 2 (both backends)", rejected)
	}
}
