package integration

import (
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc/codes"
)

// TestMetricsAfterKnownCalls runs the real binaries with --metrics-address
// (a controller and a node plugin), makes a known sequence of calls (two
// creates, a create no backend can hold, an invalid one, a publish, a stage,
// a stage of an unpublished volume, a node plugin restart, two deletes) and
// checks that the scrapes count exactly those, that the scheduler, backend,
// registry and node figures are there and sensible, and that no label
// carries a volume ID or name.
func TestMetricsAfterKnownCalls(t *testing.T) {
	addr, naddr := freeAddr(t), freeAddr(t)
	p := startBinaryArgs(t, cfgPath, filepath.Join(t.TempDir(), "csi.sock"), []string{"--metrics-address", addr})
	d := startDriver(t, configYAML(), nil) // the node plugin's configuration and registry
	const node = "node-metrics"
	n := startNodeArgs(t, d, node, []string{"--metrics-address", naddr})
	ctx := tctx(t)

	var ids []string
	names := []string{"pvc-metrics-a", "pvc-metrics-b"}
	for _, name := range names {
		v, err := p.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{
			Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: gib},
			VolumeCapabilities: mountCap(), Parameters: map[string]string{"image": golden},
			AccessibilityRequirements: zoneReq("zone-a"),
		})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, v.GetVolume().GetVolumeId())
	}
	_, err := p.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name: "pvc-metrics-huge", CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 50},
		VolumeCapabilities: mountCap(),
	})
	wantCode(t, err, codes.ResourceExhausted)
	_, err = p.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{VolumeCapabilities: mountCap()})
	wantCode(t, err, codes.InvalidArgument)

	// The first volume is published and staged; staging the second, which
	// is not published, fails.
	vc := mountVC("ext4")
	staging := filepath.Join(t.TempDir(), "staging")
	must(t, os.MkdirAll(staging, 0o750))
	_, err = publish(ctx, p.ctrl, ids[0], node, vc, false)
	must(t, err)
	must(t, stage(ctx, n, ids[0], staging, vc))
	wantCode(t, stage(ctx, n, ids[1], filepath.Join(t.TempDir(), "staging"), vc), codes.FailedPrecondition)

	fams := scrape(t, "http://"+addr+"/metrics")
	checkCounts(t, fams, []count{
		{"basalt_csi_requests_total", map[string]string{"method": "CreateVolume", "code": "OK"}, eq(2)},
		{"basalt_csi_requests_total", map[string]string{"method": "CreateVolume", "code": "ResourceExhausted"}, eq(1)},
		{"basalt_csi_requests_total", map[string]string{"method": "CreateVolume", "code": "InvalidArgument"}, eq(1)},
		{"basalt_csi_requests_total", map[string]string{"method": "ControllerPublishVolume", "code": "OK"}, eq(1)},
		{"basalt_csi_request_duration_seconds", map[string]string{"method": "CreateVolume"}, eq(4)},
		{"basalt_scheduler_placements_total", nil, eq(2)},
		{"basalt_scheduler_refusals_total", nil, eq(1)},
		{"basalt_scheduler_rejections_total", map[string]string{"filter": "capacity"}, eq(3)}, // every backend is too small
		{"basalt_backend_up", nil, eq(3)},
		// The registry census: the node, seen within a heartbeat, holds
		// one attachment; nothing of this test is pending.
		{"basalt_node_attachments", map[string]string{"node": node}, eq(1)},
		{"basalt_node_last_seen_age_seconds", map[string]string{"node": node, "zone": "zone-a"}, between(0, 45)},
		{"basalt_records_pending", map[string]string{"kind": "volume"}, between(0, 1000)},
		{"basalt_records_read_age_seconds", nil, eq(0)},
		{"basalt_flatten_queue_length", nil, between(0, 1000)},
		// Series with known labels exist before their first event.
		{"basalt_recovery_actions_total", map[string]string{"action": "undo_create"}, between(0, 1e9)},
		{"basalt_flattens_total", map[string]string{"outcome": "failed"}, between(0, 1e9)},
		{"basalt_scheduler_rejections_total", map[string]string{"filter": "zone"}, between(0, 1e9)},
		{"basalt_ceph_call_timeouts_total", map[string]string{"op": "reading"}, between(0, 1e9)},
	})
	for _, b := range []string{"a-std", "a-fast", "b-std"} {
		for _, g := range []string{"basalt_backend_capacity_bytes", "basalt_backend_virtual_free_bytes", "basalt_backend_max_oversubscription_ratio"} {
			checkCounts(t, fams, []count{{g, map[string]string{"backend": b}, between(1e-9, 1e18)}})
		}
	}
	nfams := scrape(t, "http://"+naddr+"/metrics")
	checkCounts(t, nfams, []count{
		{"basalt_csi_requests_total", map[string]string{"method": "NodeStageVolume", "code": "OK"}, eq(1)},
		{"basalt_csi_requests_total", map[string]string{"method": "NodeStageVolume", "code": "FailedPrecondition"}, eq(1)},
		{"basalt_node_staged_volumes", map[string]string{"mapper": "fuse"}, eq(1)},
		// The fuse mapper attaches a loop device; the stage probes the
		// filesystem with blkid (the staging mount itself is mount(2)).
		{"basalt_node_command_duration_seconds", map[string]string{"command": "losetup"}, between(1, 1e9)},
		{"basalt_node_command_duration_seconds", map[string]string{"command": "blkid"}, between(1, 1e9)},
		{"basalt_node_command_timeouts_total", map[string]string{"command": "losetup"}, eq(0)},
		{"basalt_node_heal_actions_total", map[string]string{"outcome": "failed"}, eq(0)},
	})
	checkNoVolumeLabels(t, nfams, ids, names)

	// A node plugin restart checks the staged volume: the new process
	// counts what its healing found (alive or healed in place).
	n.kill()
	n.start()
	nfams = scrape(t, "http://"+naddr+"/metrics")
	heals := 0.0
	for _, m := range nfams["basalt_node_heal_actions_total"].GetMetric() {
		if hasLabels(m, map[string]string{"outcome": "alive"}) || hasLabels(m, map[string]string{"outcome": "healed"}) {
			heals += m.GetCounter().GetValue()
		}
	}
	if heals != 1 {
		t.Errorf("heal actions (alive or healed) after a restart with one staged volume: %v, want 1", heals)
	}
	unstage(t, n, ids[0], staging)
	unpublish(t, p.ctrl, ids[0], node)
	for _, id := range ids {
		if _, err := p.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Fatal(err)
		}
	}
	fams = scrape(t, "http://"+addr+"/metrics")
	checkCounts(t, fams, []count{
		{"basalt_csi_requests_total", map[string]string{"method": "DeleteVolume", "code": "OK"}, eq(2)},
		{"basalt_node_attachments", map[string]string{"node": node}, eq(0)},
		// Every delete moved an image to the trash (deferred deletion),
		// every call read records: Ceph calls are timed by operation.
		{"basalt_ceph_call_duration_seconds", map[string]string{"op": "moving"}, between(2, 1e9)},
		{"basalt_ceph_call_duration_seconds", map[string]string{"op": "reading"}, between(2, 1e9)},
	})
	checkNoVolumeLabels(t, fams, ids, names)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	return lis.Addr().String()
}

// count is an expectation on the sum of a metric's series with labels (a
// counter's or gauge's value, a histogram's sample count).
type count struct {
	name   string
	labels map[string]string
	ok     func(float64) bool
}

func eq(v float64) func(float64) bool { return func(x float64) bool { return x == v } }

func between(lo, hi float64) func(float64) bool {
	return func(x float64) bool { return x >= lo && x <= hi }
}

func checkCounts(t *testing.T, fams map[string]*dto.MetricFamily, want []count) {
	t.Helper()
	for _, c := range want {
		total, found := 0.0, false
		for _, m := range fams[c.name].GetMetric() {
			if hasLabels(m, c.labels) {
				found = true
				total += m.GetCounter().GetValue() + m.GetGauge().GetValue() + float64(m.GetHistogram().GetSampleCount())
			}
		}
		switch {
		case !found:
			t.Errorf("no %s%v in the scrape", c.name, c.labels)
		case !c.ok(total):
			t.Errorf("%s%v = %v, not what the calls made", c.name, c.labels, total)
		}
	}
}

// checkNoVolumeLabels: bounded labels only, nothing that names a volume.
func checkNoVolumeLabels(t *testing.T, fams map[string]*dto.MetricFamily, ids, names []string) {
	t.Helper()
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
