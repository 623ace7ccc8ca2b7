package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// repoRoot is two levels up from this package.
var repoRoot = func() string {
	wd, _ := os.Getwd()
	return filepath.Clean(filepath.Join(wd, "..", ".."))
}()

// cluster is a real single-host Ceph cluster started by test/ceph-cluster.sh.
type cluster struct {
	Name, Conf, Keyring, FSID, Mon string
	// Keyrings of the users deploy/ceph-users.sh makes.
	CtlKeyring, NodeKeyring string
}

// makeUsers runs deploy/ceph-users.sh against c for pools.
func (c *cluster) makeUsers(ctx context.Context, pools ...string) error {
	dir := filepath.Join(workDir, "users-"+c.Name)
	cmd := exec.CommandContext(ctx, filepath.Join(repoRoot, "deploy", "ceph-users.sh"), append([]string{dir}, pools...)...)
	cmd.Env = append(os.Environ(), "CEPH_ARGS=-c "+c.Conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("deploy/ceph-users.sh: %v\n%s", err, out)
	}
	c.CtlKeyring = filepath.Join(dir, "ceph.client.basalt-controller.keyring")
	c.NodeKeyring = filepath.Join(dir, "ceph.client.basalt-node.keyring")
	return nil
}

func script(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(repoRoot, "test", args[0]), args[1:]...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

func startCluster(name string, pools ...string) (*cluster, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := script(ctx, "ceph-cluster.sh", "start", name)
	if err != nil {
		return nil, err
	}
	c := &cluster{Name: name}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "=")
		switch k {
		case "CEPH_CONF":
			c.Conf = v
		case "CEPH_KEYRING":
			c.Keyring = v
		case "CEPH_FSID":
			c.FSID = v
		case "CEPH_MON":
			c.Mon = v
		}
	}
	if c.Conf == "" || c.FSID == "" {
		return nil, fmt.Errorf("cluster script printed no CEPH_CONF/CEPH_FSID:\n%s", out)
	}
	for _, p := range pools {
		if _, err := script(ctx, "ceph-cluster.sh", "create-pool", name, p); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func stopCluster(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := script(ctx, "ceph-cluster.sh", "stop", name); err != nil {
		fmt.Fprintln(os.Stderr, "stopping cluster:", err)
	}
}

// rbd runs the rbd CLI against c with a deadline.
func (c *cluster) rbd(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "rbd", append([]string{"-c", c.Conf}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("rbd %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// images lists the Basalt images in pool.
func (c *cluster) images(t testing.TB, pool string) []string {
	var out []string
	for _, l := range strings.Fields(c.rbd(t, "ls", pool)) {
		if strings.HasPrefix(l, "basalt-") {
			out = append(out, l)
		}
	}
	return out
}
