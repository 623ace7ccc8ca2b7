// Package sanity runs the CSI conformance suite (csi-test v5.6.0 pkg/sanity)
// against a real basalt-csi (controller and node, fuse mapper) on a real Ceph
// cluster started by the project's script.
//
// Ginkgo runs one suite per process, so the parent test (TestSanity) starts
// the cluster and the driver once and re-runs this test binary for each
// configuration; the child (BASALT_SANITY_CHILD=1) runs the suite and prints
// Ginkgo's summary line. Every run must report 0 failed specs.
package sanity

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"

	"github.com/basalt-csi/basalt/pkg/volumeid"
	"github.com/basalt-csi/basalt/test/testutil"
)

var repoRoot = func() string {
	wd, _ := os.Getwd()
	return filepath.Clean(filepath.Join(wd, "..", ".."))
}()

// Attach limit the node plugin reports; TestNodeVolumeAttachLimit fills it.
const attachLimit = 4

func TestMain(m *testing.M) {
	if os.Getenv("BASALT_SANITY_CHILD") == "1" {
		os.Exit(m.Run())
	}
	os.Exit(m.Run())
}

// TestSanitySuite is the child: it runs only inside a process started by TestSanity.
func TestSanitySuite(t *testing.T) {
	if os.Getenv("BASALT_SANITY_CHILD") != "1" {
		return // the parent, TestSanity, drives this one in subprocesses
	}
	cfg := sanity.NewTestConfig()
	cfg.Address = os.Getenv("BASALT_SANITY_ENDPOINT")
	work := os.Getenv("BASALT_SANITY_WORKDIR")
	cfg.TargetPath = filepath.Join(work, "target")
	cfg.StagingPath = filepath.Join(work, "staging")
	cfg.TestVolumeAccessType = os.Getenv("BASALT_SANITY_ACCESS")
	cfg.TestVolumeSize, _ = strconv.ParseInt(os.Getenv("BASALT_SANITY_SIZE"), 10, 64)
	cfg.TestSnapshotParameters = map[string]string{"purpose": "sanity"}
	cfg.IdempotentCount = 3
	cfg.TestNodeVolumeAttachLimit = true
	// ModifyVolume specs: QoS limits are Basalt's mutable parameters.
	cfg.TestVolumeMutableParameters = map[string]string{"qosIopsLimit": "2000", "qosWriteBpsLimit": "104857600"}
	if img := os.Getenv("BASALT_SANITY_IMAGE"); img != "" {
		cfg.TestVolumeParameters = map[string]string{"image": img}
	}
	pool, _ := strconv.ParseInt(os.Getenv("BASALT_SANITY_POOL_ID"), 10, 64)
	cfg.IDGen = idGen{fsid: os.Getenv("BASALT_SANITY_FSID"), pool: pool}
	sanity.Test(t, cfg)
}

// idGen makes "valid but nonexistent" IDs that parse as Basalt IDs of the
// test cluster's pool, so the NotFound paths are really exercised.
type idGen struct {
	fsid string
	pool int64
}

func (g idGen) GenerateUniqueValidVolumeID() string {
	id, err := volumeid.New(g.fsid, g.pool)
	if err != nil {
		panic(err)
	}
	return id.String()
}
func (g idGen) GenerateInvalidVolumeID() string { return "not-a-basalt-volume-id" }
func (g idGen) GenerateInvalidNodeID() string   { return "not/a/node" }
func (g idGen) GenerateUniqueValidNodeID() string {
	return "sanity-fake-node-" + volumeid.NewUUID()[:8]
}

func run(ctx context.Context, t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.CommandContext(ctx, name, args...).Output()
	if err != nil {
		stderr := ""
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("%s %v: %v\n%s%s", name, args, err, out, stderr)
	}
	return string(out)
}

var ansi = regexp.MustCompile(`\x1b\[[0-9;]*m`)
var summary = regexp.MustCompile(`Ran (\d+) of (\d+) Specs in [0-9.]+ seconds`)
var counts = regexp.MustCompile(`(\d+) Passed \| (\d+) Failed \| (\d+) Pending \| (\d+) Skipped`)

// TestSanity starts Ceph and basalt-csi, then runs the suite for each
// access type: mount with volumes cloned from a golden image, block with
// blank volumes.
func TestSanity(t *testing.T) {
	if os.Getenv("BASALT_SANITY_CHILD") == "1" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	script := filepath.Join(repoRoot, "test", "ceph-cluster.sh")
	env := map[string]string{}
	for _, l := range strings.Split(run(ctx, t, script, "start", "sanity"), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			env[k] = v
		}
	}
	t.Cleanup(func() { _ = exec.Command(script, "stop", "sanity").Run() })
	run(ctx, t, script, "create-pool", "sanity", "volumes")
	run(ctx, t, script, "create-pool", "sanity", "images")
	run(ctx, t, filepath.Join(repoRoot, "test", "golden-image.sh"), env["CEPH_CONF"], "images", "golden", "v1", "64")
	var dump struct {
		Pools []struct {
			ID   int64  `json:"pool"`
			Name string `json:"pool_name"`
		} `json:"pools"`
	}
	if err := json.Unmarshal([]byte(run(ctx, t, "ceph", "-c", env["CEPH_CONF"], "osd", "dump", "-f", "json")), &dump); err != nil {
		t.Fatal(err)
	}
	poolID := int64(-1)
	for _, p := range dump.Pools {
		if p.Name == "volumes" {
			poolID = p.ID
		}
	}

	work := t.TempDir()
	cfgPath := filepath.Join(work, "config.yaml")
	yaml := fmt.Sprintf("backends:\n  - name: local\n    cephConf: %s\n    user: admin\n    keyring: %s\n    pool: volumes\n    zone: zone-a\n",
		env["CEPH_CONF"], env["CEPH_KEYRING"])
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(work, "csi.sock")
	logPath := filepath.Join(repoRoot, "_output", "sanity-driver.log")
	_ = os.MkdirAll(filepath.Dir(logPath), 0o755)
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	drv := exec.Command(filepath.Join(repoRoot, "bin", "basalt-csi"), "--mode=all", "--config", cfgPath,
		"--endpoint", "unix://"+sock, "--node-id", "sanity-node", "--zone", "zone-a", "--mapper", "fuse",
		"--state-dir", filepath.Join(work, "state"), "--max-volumes-per-node", strconv.Itoa(attachLimit))
	drv.Stdout, drv.Stderr = logf, logf
	if err := drv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = drv.Process.Kill()
		_ = drv.Wait()
		// A failed spec may leave volumes staged; nothing may outlive the test.
		testutil.CleanNodeState(filepath.Join(work, "state"), work)
	})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("driver did not start; see %s", logPath)
		}
	}

	// The block run uses a size that is no whole number of MiB: a range
	// that holds no whole MiB gets an exact size.
	for _, tc := range []struct {
		name, access, image string
		size                int64
	}{
		{"mount, cloned from a golden image", "mount", "images/golden@v1", 256 << 20},
		{"block, blank volumes", "block", "", 3<<20 + 4096},
	} {
		t.Run(tc.access, func(t *testing.T) {
			dir := t.TempDir()
			t.Cleanup(func() { testutil.CleanNodeState(filepath.Join(work, "state"), dir) })
			// -ginkgo.v lists every spec, skipped ones with the reason, in the log.
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run", "^TestSanitySuite$", "-test.v", "-test.timeout", "30m", "-ginkgo.v")
			cmd.Env = append(os.Environ(),
				"BASALT_SANITY_CHILD=1",
				"BASALT_SANITY_ENDPOINT=unix://"+sock,
				"BASALT_SANITY_WORKDIR="+dir,
				"BASALT_SANITY_ACCESS="+tc.access,
				"BASALT_SANITY_IMAGE="+tc.image,
				"BASALT_SANITY_SIZE="+strconv.FormatInt(tc.size, 10),
				"BASALT_SANITY_FSID="+env["CEPH_FSID"],
				"BASALT_SANITY_POOL_ID="+strconv.FormatInt(poolID, 10),
			)
			outPath := filepath.Join(repoRoot, "_output", "sanity-"+tc.access+".log")
			outf, err := os.Create(outPath)
			if err != nil {
				t.Fatal(err)
			}
			defer outf.Close()
			pr, pw := io.Pipe()
			cmd.Stdout, cmd.Stderr = pw, pw
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var ran, passed, failed, skipped string
			done := make(chan struct{})
			go func() {
				defer close(done)
				sc := bufio.NewScanner(pr)
				sc.Buffer(make([]byte, 1<<20), 1<<20)
				for sc.Scan() {
					line := ansi.ReplaceAllString(sc.Text(), "")
					fmt.Fprintln(outf, line)
					if m := summary.FindStringSubmatch(line); m != nil {
						ran = m[0]
						fmt.Printf("sanity (%s): %s\n", tc.name, strings.TrimSpace(line))
					}
					if m := counts.FindStringSubmatch(line); m != nil {
						passed, failed, skipped = m[1], m[2], m[4]
						fmt.Printf("sanity (%s): %s\n", tc.name, strings.TrimSpace(line))
					}
					if strings.Contains(line, "[FAIL]") {
						fmt.Printf("sanity (%s): %s\n", tc.name, strings.TrimSpace(line))
					}
				}
			}()
			err = cmd.Wait()
			pw.Close()
			<-done
			if ran == "" || passed == "" {
				t.Fatalf("no Ginkgo summary in the sanity output (see %s): %v", outPath, err)
			}
			if failed != "0" || err != nil {
				t.Fatalf("%s: %s passed, %s failed (see %s and %s)", ran, passed, failed, outPath, logPath)
			}
			t.Logf("%s: %s passed, 0 failed, %s skipped", ran, passed, skipped)
		})
	}
}
