package metrics

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"
)

// registeredNames is every metric name Basalt exposes, with a histogram's
// _bucket, _sum and _count series.
func registeredNames(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	fams, err := Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		names[f.GetName()] = true
		if f.GetType().String() == "HISTOGRAM" {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[f.GetName()+s] = true
			}
		}
	}
	// The collected gauges (backends, the registry census, staged
	// volumes) exist once the driver has them; their descriptions name them.
	ch := make(chan *prometheus.Desc, 32)
	backendCollector{}.Describe(ch)
	(&censusCollector{}).Describe(ch)
	stagedCollector{}.Describe(ch)
	close(ch)
	re := regexp.MustCompile(`fqName: "([^"]+)"`)
	for d := range ch {
		names[re.FindStringSubmatch(d.String())[1]] = true
	}
	return names
}

var metricRef = regexp.MustCompile(`\bbasalt_[a-z_]+\b`)

// TestExamplesUseRegisteredMetrics fails when the Grafana dashboard or an
// alert rule in examples/monitoring queries a metric Basalt does not
// register (a rename, a typo, a metric that was never built).
func TestExamplesUseRegisteredMetrics(t *testing.T) {
	ObserveCSI("Probe", "OK", 0) // so that the vectors have a child to gather
	Placed("x")
	Refused([]string{"zone"})
	Rescheduled()
	ObserveCeph("reading", 0, true, true) // failed and timed out: every child
	ObserveCommand("rbd", 0, true, true)
	Healed(HealAlive)
	Recovered(RecoveryUndoCreate)
	Flattened(0, nil)
	CacheLookup("x", CacheHit)
	CacheFilled("x", 0, nil)
	CacheEvicted("x", "count")
	names := registeredNames(t)

	var exprs []string
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	data, err := os.ReadFile("../../examples/monitoring/dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			exprs = append(exprs, q.Expr)
		}
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	data, err = os.ReadFile("../../examples/monitoring/alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &rules); err != nil {
		t.Fatalf("alerts.yaml: %v", err)
	}
	alerts := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || strings.TrimSpace(r.Expr) == "" {
				t.Errorf("rule %q without a name or an expression", r.Alert)
			}
			alerts++
			exprs = append(exprs, r.Expr)
		}
	}
	if len(dash.Panels) < 8 || alerts < 4 {
		t.Fatalf("%d panels and %d alerts: the examples lost their content", len(dash.Panels), alerts)
	}
	used := map[string]bool{}
	for _, e := range exprs {
		refs := metricRef.FindAllString(e, -1)
		if len(refs) == 0 {
			t.Errorf("query %q uses no Basalt metric", e)
		}
		for _, n := range refs {
			used[n] = true
			if !names[n] {
				t.Errorf("query %q uses %s, which Basalt does not register", e, n)
			}
		}
	}
	// The check itself must be able to fail.
	if names["basalt_no_such_metric_total"] || !names["basalt_csi_request_duration_seconds_bucket"] {
		t.Fatal("registeredNames is wrong")
	}
	t.Logf("%d panels, %d alert rules, %d metrics used", len(dash.Panels), alerts, len(used))
}
