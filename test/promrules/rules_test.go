// Package promrules checks Basalt's Prometheus alert rules with Prometheus'
// own rule checker: `promtool check rules` is rulefmt.ParseFile (YAML
// structure, PromQL of every expression, label and annotation templates)
// plus a duplicate check that only concerns recording rules. It is a module
// of its own so that Prometheus' dependencies stay out of the driver's
// go.mod, and it is a test rather than the promtool binary because promtool
// links every service discovery (Kubernetes client, cloud SDKs): about a
// gigabyte of modules and minutes of compiling for the same function.
package promrules

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

// check is `promtool check rules file`, without the lint of recording rules.
func check(file string) (int, []error) {
	p := parser.NewParser(parser.Options{}) // promtool's default options
	rgs, errs := rulefmt.ParseFile(file, false, model.UTF8Validation, p, slog.New(slog.DiscardHandler))
	if len(errs) > 0 {
		return 0, errs
	}
	n := 0
	for _, g := range rgs.Groups {
		n += len(g.Rules)
	}
	return n, nil
}

func TestAlertRulesPassPrometheusChecks(t *testing.T) {
	file := filepath.Join("..", "..", "examples", "monitoring", "alerts.yaml")
	n, errs := check(file)
	for _, err := range errs {
		t.Error(err)
	}
	if len(errs) == 0 && n < 5 {
		t.Errorf("%d rules in %s: the file lost its content", n, file)
	}
	t.Logf("%s: %d rules pass Prometheus' rule checks", file, n)
}

// The checker must be able to fail: a bad expression, a bad template and an
// unknown field are each refused.
func TestCheckerRefusesBrokenRules(t *testing.T) {
	for name, rule := range map[string]string{
		"bad PromQL":   "      - alert: A\n        expr: sum by (backend (basalt_backend_up)\n",
		"bad template": "      - alert: A\n        expr: basalt_backend_up == 0\n        annotations: {summary: \"{{ $labels.backend \"}\n",
		"bad duration": "      - alert: A\n        expr: basalt_backend_up == 0\n        for: five minutes\n",
		"no name":      "      - expr: basalt_backend_up == 0\n",
	} {
		file := filepath.Join(t.TempDir(), "rules.yaml")
		if err := os.WriteFile(file, []byte("groups:\n  - name: g\n    rules:\n"+rule), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, errs := check(file); len(errs) == 0 {
			t.Errorf("%s: accepted", name)
		}
	}
}
