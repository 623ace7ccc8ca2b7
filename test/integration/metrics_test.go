package integration

import (
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc/codes"
)

// TestMetricsAfterKnownCalls runs the real binary with --metrics-address,
// makes a known sequence of calls (two creates, a create no backend can
// hold, an invalid one, two deletes) and checks that the scrape counts
// exactly those, that the scheduler and backend figures are there and
// sensible, and that no label carries a volume ID or name.
func TestMetricsAfterKnownCalls(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	p := startBinaryArgs(t, cfgPath, filepath.Join(t.TempDir(), "csi.sock"), []string{"--metrics-address", addr})

	var ids []string
	names := []string{"pvc-metrics-a", "pvc-metrics-b"}
	for _, name := range names {
		v, err := p.ctrl.CreateVolume(tctx(t), &csi.CreateVolumeRequest{
			Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: gib},
			VolumeCapabilities: mountCap(), Parameters: map[string]string{"image": golden},
		})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, v.GetVolume().GetVolumeId())
	}
	_, err = p.ctrl.CreateVolume(tctx(t), &csi.CreateVolumeRequest{
		Name: "pvc-metrics-huge", CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 50},
		VolumeCapabilities: mountCap(),
	})
	wantCode(t, err, codes.ResourceExhausted)
	_, err = p.ctrl.CreateVolume(tctx(t), &csi.CreateVolumeRequest{VolumeCapabilities: mountCap()})
	wantCode(t, err, codes.InvalidArgument)
	for _, id := range ids {
		if _, err := p.ctrl.DeleteVolume(tctx(t), &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Fatal(err)
		}
	}

	fams := scrape(t, "http://"+addr+"/metrics")
	value := func(name string, labels map[string]string) float64 {
		t.Helper()
		total, found := 0.0, false
		for _, m := range fams[name].GetMetric() {
			if hasLabels(m, labels) {
				found = true
				total += m.GetCounter().GetValue() + m.GetGauge().GetValue() + float64(m.GetHistogram().GetSampleCount())
			}
		}
		if !found {
			t.Errorf("no %s%v in the scrape", name, labels)
		}
		return total
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"basalt_csi_requests_total", map[string]string{"method": "CreateVolume", "code": "OK"}, 2},
		{"basalt_csi_requests_total", map[string]string{"method": "CreateVolume", "code": "ResourceExhausted"}, 1},
		{"basalt_csi_requests_total", map[string]string{"method": "CreateVolume", "code": "InvalidArgument"}, 1},
		{"basalt_csi_requests_total", map[string]string{"method": "DeleteVolume", "code": "OK"}, 2},
		{"basalt_csi_request_duration_seconds", map[string]string{"method": "CreateVolume"}, 4},
		{"basalt_scheduler_placements_total", nil, 2},
		{"basalt_scheduler_refusals_total", nil, 1},
		{"basalt_scheduler_rejections_total", map[string]string{"filter": "capacity"}, 3}, // every backend is too small
		{"basalt_backend_up", nil, 3},
	} {
		if got := value(c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	for _, b := range []string{"a-std", "a-fast", "b-std"} {
		for _, g := range []string{"basalt_backend_capacity_bytes", "basalt_backend_virtual_free_bytes", "basalt_backend_max_oversubscription_ratio"} {
			if v := value(g, map[string]string{"backend": b}); v <= 0 {
				t.Errorf("%s{backend=%q} = %v, want > 0", g, b, v)
			}
		}
	}
	// Every create removed an image and read records: Ceph calls are timed
	// by operation.
	for _, op := range []string{"removing", "reading"} {
		if v := value("basalt_ceph_call_duration_seconds", map[string]string{"op": op}); v < 2 {
			t.Errorf("basalt_ceph_call_duration_seconds{op=%q} counted %v calls, want at least 2", op, v)
		}
	}
	// Bounded labels only: nothing that names a volume.
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				for _, s := range append(append([]string(nil), ids...), names...) {
					if strings.Contains(l.GetValue(), s) {
						t.Errorf("%s has label %s=%q, which names a volume", name, l.GetName(), l.GetValue())
					}
				}
			}
		}
	}
}

func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %v %s", url, err, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("parsing the scrape: %v\n%s", err, body)
	}
	return fams
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	have := map[string]string{}
	for _, l := range m.GetLabel() {
		have[l.GetName()] = l.GetValue()
	}
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}
