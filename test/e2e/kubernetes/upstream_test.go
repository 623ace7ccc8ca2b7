package kubernetes

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// ciFocus is the part of Kubernetes' external storage suite that `make test`
// runs (`make e2e-upstream` runs all of it that applies): provisioning
// (blank, from snapshots and clones, ROX), volumes, volume modes, topology,
// capacity, expansion, ModifyVolume, snapshots and group snapshots, in the
// dynamic default-filesystem and block patterns; 49 specs. Ginkgo matches
// it against the full spec text.
const ciFocus = `\[Testpattern: Dynamic PV \((default fs|block volmode)\)\] (provisioning|volumes|volumeMode|volume-modify) ` +
	`|\[Testpattern: Dynamic PV \(default fs\)\] capacity ` +
	`|\[Testpattern: Dynamic PV \(filesystem volmode\)\] volumeMode ` +
	`|\[Testpattern: Dynamic PV \((default fs|block volmode)\)\(allowExpansion\)\] volume-expand ` +
	`|\[Testpattern: Dynamic PV \((immediate|delayed) binding\)\] topology ` +
	`|\[Testpattern: Dynamic Snapshot \(delete policy\)\] snapshottable ` +
	`|\[Testpattern: +\(delete policy\)\] volumegroupsnapshottable `

// upstreamSkip is never run, in any mode, because this harness cannot give
// those specs what they need: [Disruptive] ones restart the kubelet or the
// node over SSH, which this one-host cluster does not offer; the volume
// populator spec runs registry.k8s.io/sig-storage/hello-populator and
// volume-data-source-validator, whose modules the module proxy does not
// serve (so their images cannot be built here; the spec tests Kubernetes'
// populator machinery, to which the driver only gives a blank volume).
const upstreamSkip = `\[Disruptive\]|provisioning should provision storage with any volume data source`

// TestUpstreamStorage runs Kubernetes' own storage conformance for external
// CSI drivers (test/e2e/storage/external in e2e.test v1.36.3, built from the
// module by build-tools.sh) against the Basalt deployed by TestMain, as its
// test-driver file declares it. BASALT_UPSTREAM_TESTDRIVER (another
// declaration), BASALT_UPSTREAM_FOCUS (a regular expression; default:
// ciFocus, or everything when BASALT_UPSTREAM_ALL is set) and
// BASALT_UPSTREAM_SKIP choose what runs, BASALT_UPSTREAM_PROCS how many specs
// run at once: `make e2e-upstream` sets them from TESTDRIVER, FOCUS, SKIP and
// PROCS. Ginkgo's summary line is logged; its JUnit report and the full log
// are in _output/e2e/upstream.
func TestUpstreamStorage(t *testing.T) {
	driver := os.Getenv("BASALT_UPSTREAM_TESTDRIVER")
	if driver == "" {
		driver = filepath.Join(repoRoot, "test/e2e/testdriver.yaml")
	}
	driver = resolveDriverFile(t, driver, filepath.Join(repoRoot, "_output/e2e/upstream"))
	focus, timeout := os.Getenv("BASALT_UPSTREAM_FOCUS"), "6h"
	if focus == "" && os.Getenv("BASALT_UPSTREAM_ALL") == "" {
		focus, timeout = ciFocus, "40m" // a hung spec must not eat make test's whole budget
	}
	skip := upstreamSkip
	if s := os.Getenv("BASALT_UPSTREAM_SKIP"); s != "" {
		skip += "|" + s
	}
	for _, re := range []string{focus, skip} {
		if _, err := regexp.Compile(re); err != nil {
			t.Fatalf("bad regular expression %q: %v", re, err)
		}
	}
	report := filepath.Join(repoRoot, "_output/e2e/upstream")
	if err := os.MkdirAll(report, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Hour)
	defer cancel()
	// e2e.test and ginkgo: `make e2e` builds them in the background (outside
	// this network namespace) while the tests before this one run; wait for
	// that build, or find them cached.
	start := time.Now()
	if _, err := sh(ctx, []string{"GOFLAGS="}, filepath.Join(repoRoot, "test/e2e/kubernetes/build-tools.sh"), "suite"); err != nil {
		t.Fatalf("the upstream suite's binaries: %v", err)
	}
	t.Logf("e2e.test ready in %v", time.Since(start).Round(time.Second))
	procs := os.Getenv("BASALT_UPSTREAM_PROCS")
	if procs == "" {
		procs = "4" // most of a spec is waiting for pods and volumes
	}
	// The ginkgo runner (same version as e2e.test's library) runs the
	// specs in PROCS processes, [Serial] ones alone at the end.
	args := []string{
		"--procs", procs,
		"--timeout", timeout,
		"--no-color",
		// Only the external storage specs: the prefix and FOCUS in one
		// expression (several --focus flags would be ORed).
		"--focus", `External.Storage.*(` + focus + `)`,
		"--skip", skip,
		filepath.Join(env["BIN"], "e2e.test"), "--",
		"-kubeconfig", env["KUBECONFIG"],
		"-kubectl-path", filepath.Join(env["BIN"], "kubectl"),
		"-provider", "skeleton",
		"-storage.testdriver", driver,
		"-report-dir", report,
	}
	cmd := exec.CommandContext(ctx, filepath.Join(env["BIN"], "ginkgo"), args...)
	cmd.Dir = repoRoot
	logFile, err := os.Create(filepath.Join(report, "e2e.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	t.Logf("ginkgo %s", strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); pw.Close() }()
	// The log goes to the file whole; here, the failures and Ginkgo's
	// summary, so `make test` shows the counts.
	summary := regexp.MustCompile(`^\s*\[(FAIL|FAILED|PANICKED|TIMEDOUT)\]|^Ran \d+ of \d+ Specs|^(SUCCESS|FAIL)! -- `)
	sc := bufio.NewScanner(io.TeeReader(pr, logFile)) // as it comes: Ginkgo's progress dots end no line
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if summary.MatchString(sc.Text()) {
			t.Log(sc.Text())
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("the upstream suite: %v (the log: %s)", err, filepath.Join(report, "e2e.log"))
	}
}

// fromFile is a test-driver file's reference to a class manifest, in YAML
// (FromFile: path) or JSON ("FromFile": "path").
var fromFile = regexp.MustCompile(`(?m)^(\s*"?FromFile"?\s*:\s*"?)([^"\s]+)`)

// resolveDriverFile writes a copy of the test-driver file into dir with its
// relative FromFile paths made absolute, relative to the file's own
// directory, and returns the copy's path: the suite reads some of those
// files relative to its working directory, which the ginkgo runner sets to
// the directory of e2e.test.
func resolveDriverFile(t *testing.T, path, dir string) string {
	t.Helper()
	path, _ = filepath.Abs(path)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data = fromFile.ReplaceAllFunc(data, func(m []byte) []byte {
		g := fromFile.FindSubmatch(m)
		if filepath.IsAbs(string(g[2])) {
			return m
		}
		return append(g[1], filepath.Join(filepath.Dir(path), string(g[2]))...)
	})
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, filepath.Base(path))
	if err := os.WriteFile(out, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}
