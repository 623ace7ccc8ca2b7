package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ceph/go-ceph/rados"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

const (
	clusterName = "bench"
	nodeID      = "bench-node"
	zone        = "zone-a"
	goldenSpec  = "images/golden@v1"
	// cmdTimeout bounds every command the bench runs itself.
	cmdTimeout = 2 * time.Minute
)

// env is what the bench sets up: the cluster, the driver, a gRPC client and
// a go-ceph connection for the baselines. teardown undoes whatever was done.
type env struct {
	o *options

	clusterStarted bool
	cephConf       string
	keyring        string
	fsid           string

	tmp     string // state dir, socket, mount points (everything node-side is below it)
	cfgPath string

	driver     *exec.Cmd
	driverDone chan struct{}
	driverLog  *os.File
	grpcConn   *grpc.ClientConn
	ctrl       csi.ControllerClient
	node       csi.NodeClient
	ident      csi.IdentityClient

	rconn    *rados.Conn
	volumes  *rados.IOContext // pool volumes
	images   *rados.IOContext // pool images
	setupLog *os.File
}

func (e *env) setup(ctx context.Context) error {
	o := e.o
	var err error
	e.setupLog, err = os.Create(filepath.Join(o.out, "setup.log"))
	if err != nil {
		return err
	}
	bin := filepath.Join(o.root, "bin", "basalt-csi")
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("%s: %w (run make build)", bin, err)
	}
	e.tmp, err = os.MkdirTemp("", "basalt-bench-")
	if err != nil {
		return err
	}

	// The cluster. A leftover "bench" cluster (crashed run) is replaced.
	t0 := time.Now()
	script := filepath.Join(o.root, "test", "ceph-cluster.sh")
	if _, err := e.script(ctx, 2*time.Minute, script, "stop", clusterName); err != nil {
		return err
	}
	e.clusterStarted = true // from here on, teardown stops it
	out, err := e.script(ctx, 3*time.Minute, script, "start", clusterName)
	if err != nil {
		return err
	}
	for _, l := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(l), "=")
		if !ok {
			continue
		}
		switch k {
		case "CEPH_CONF":
			e.cephConf = v
		case "CEPH_KEYRING":
			e.keyring = v
		case "CEPH_FSID":
			e.fsid = v
		}
	}
	if e.cephConf == "" || e.keyring == "" || e.fsid == "" {
		return fmt.Errorf("ceph-cluster.sh start printed no CEPH_CONF/CEPH_KEYRING/CEPH_FSID lines: %q", out)
	}
	for _, pool := range []string{"volumes", "images"} {
		if _, err := e.script(ctx, 2*time.Minute, script, "create-pool", clusterName, pool); err != nil {
			return err
		}
	}
	if _, err := e.script(ctx, 2*time.Minute, filepath.Join(o.root, "test", "golden-image.sh"), e.cephConf, "images", "golden", "v1", "64"); err != nil {
		return err
	}
	logf("cluster %s ready in %s (conf %s)", clusterName, time.Since(t0).Round(100*time.Millisecond), e.cephConf)

	// go-ceph for the baselines.
	if err := e.connectRados(ctx); err != nil {
		return err
	}

	// The driver.
	e.cfgPath = filepath.Join(e.tmp, "config.yaml")
	cfg := fmt.Sprintf(`backends:
  - name: local
    cephConf: %s
    user: admin
    keyring: %s
    pool: volumes
    zone: %s
    # thin volumes on an 8 GiB memstore: 10,000 1 GiB volumes (-scale-n) must fit
    maxOverSubscriptionRatio: 5000
statsIntervalSeconds: 30
`, e.cephConf, e.keyring, zone)
	if err := os.WriteFile(e.cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	if err := e.startDriver(ctx, bin); err != nil {
		return err
	}
	return nil
}

// script runs a project script with a deadline; stdout is returned, stderr
// goes to setup.log (and its tail into the error).
func (e *env) script(ctx context.Context, timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = e.o.root
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = io.MultiWriter(&stderr, e.setupLog)
	cmd.WaitDelay = 5 * time.Second
	fmt.Fprintf(e.setupLog, "$ %s %s\n", name, strings.Join(args, " "))
	err := cmd.Run()
	if err != nil {
		return "", fmt.Errorf("%s %s: %v: %s", filepath.Base(name), strings.Join(args, " "), err, tail(stderr.String(), 15))
	}
	return stdout.String(), nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (e *env) connectRados(ctx context.Context) error {
	conn, err := dialRados(ctx, e.cephConf, e.keyring)
	if err != nil {
		return err
	}
	e.rconn = conn
	if e.volumes, err = conn.OpenIOContext("volumes"); err != nil {
		return fmt.Errorf("opening pool volumes: %w", err)
	}
	if e.images, err = conn.OpenIOContext("images"); err != nil {
		return fmt.Errorf("opening pool images: %w", err)
	}
	return nil
}

// withDeadline runs f (a librados call, which cannot be cancelled) and stops
// waiting for it at the deadline.
func withDeadline(ctx context.Context, d time.Duration, what string, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s: no answer: %w", what, ctx.Err())
	}
}

func (e *env) startDriver(ctx context.Context, bin string) error {
	var err error
	e.driverLog, err = os.Create(filepath.Join(e.o.out, "driver.log"))
	if err != nil {
		return err
	}
	sock := filepath.Join(e.tmp, "csi.sock")
	args := []string{"--mode=all", "--mapper=fuse", "--node-id", nodeID, "--zone", zone,
		"--state-dir", filepath.Join(e.tmp, "state"), "--max-volumes-per-node", "10000",
		"--endpoint", "unix://" + sock, "--config", e.cfgPath}
	fmt.Fprintf(e.setupLog, "$ %s %s\n", bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Dir = e.o.root
	cmd.Stdout, cmd.Stderr = e.driverLog, e.driverLog
	// Its own process group: a Ctrl-C reaches the bench, which stops the
	// driver after tearing down what it staged.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	e.driver = cmd
	e.driverDone = make(chan struct{})
	go func() { _ = cmd.Wait(); close(e.driverDone) }()
	logf("basalt-csi started (pid %d), log %s", cmd.Process.Pid, e.driverLog.Name())

	e.grpcConn, err = grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	e.ctrl = csi.NewControllerClient(e.grpcConn)
	e.node = csi.NewNodeClient(e.grpcConn)
	e.ident = csi.NewIdentityClient(e.grpcConn)

	deadline := time.Now().Add(60 * time.Second)
	for {
		if e.driverExited() {
			return fmt.Errorf("basalt-csi exited during start: %s", tail(readFile(e.driverLog.Name()), 10))
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		r, err := e.ident.Probe(cctx, &csi.ProbeRequest{})
		cancel()
		if err == nil && r.GetReady().GetValue() {
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("basalt-csi not ready after 60 s (last: %v): %s", err, tail(readFile(e.driverLog.Name()), 10))
		}
		time.Sleep(100 * time.Millisecond)
	}
	// ControllerPublish needs the node registered in Ceph.
	for {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		out, err := exec.CommandContext(cctx, bin, "nodes", "--config", e.cfgPath, "-o", "json").Output()
		cancel()
		if err == nil && bytes.Contains(out, []byte(`"`+nodeID+`"`)) {
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %s did not register within 60 s (last: %v)", nodeID, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// "Idle right after start": the start-up work (first capacity refresh,
	// registration, recovery pass) is done; let it settle a moment.
	time.Sleep(2 * time.Second)
	return nil
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

func (e *env) driverExited() bool {
	if e.driverDone == nil {
		return false
	}
	select {
	case <-e.driverDone:
		return true
	default:
		return false
	}
}

// cpuSample is the CPU time (user+system, ms) used so far by the driver,
// the bench process itself (the librbd baseline runs in it) and ceph-osd.
type cpuSample struct{ driver, self, osd float64 }

func (e *env) cpu() cpuSample {
	var s cpuSample
	if e.driver != nil && !e.driverExited() {
		s.driver = procCPU(e.driver.Process.Pid)
	}
	s.self = procCPU(os.Getpid())
	if b, err := os.ReadFile(filepath.Join(filepath.Dir(e.cephConf), "pids", "osd")); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			s.osd = procCPU(pid)
		}
	}
	return s
}

// procCPU reads utime+stime of pid from /proc (clock ticks of 10 ms).
func procCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (u + st) * 10
}

// rss reads VmRSS and VmHWM (KiB) of the driver.
func (e *env) rss() (rss, hwm int64) {
	if e.driver == nil || e.driverExited() {
		return 0, 0
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", e.driver.Process.Pid))
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(fields[0], 10, 64)
		switch k {
		case "VmRSS":
			rss = n
		case "VmHWM":
			hwm = n
		}
	}
	return rss, hwm
}

// teardown undoes setup in reverse, each step bounded, none skipped
// because an earlier one failed.
func (e *env) teardown() {
	if e.grpcConn != nil {
		_ = e.grpcConn.Close()
	}
	if e.driver != nil && !e.driverExited() {
		pid := e.driver.Process.Pid
		_ = syscall.Kill(pid, syscall.SIGTERM)
		select {
		case <-e.driverDone:
		case <-time.After(15 * time.Second):
			logf("basalt-csi (pid %d) did not stop on SIGTERM; killing it", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
			<-e.driverDone
		}
	}
	if e.driverLog != nil {
		_ = e.driverLog.Close()
	}
	if e.tmp != "" {
		// Anything still staged (a failed or interrupted node part), once
		// the driver can no longer add to it.
		cleanNodeState(e.tmp)
	}
	if e.volumes != nil {
		e.volumes.Destroy()
	}
	if e.images != nil {
		e.images.Destroy()
	}
	if e.rconn != nil {
		done := make(chan struct{})
		go func() { e.rconn.Shutdown(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
		}
	}
	if e.clusterStarted {
		if _, err := e.script(context.Background(), 2*time.Minute, filepath.Join(e.o.root, "test", "ceph-cluster.sh"), "stop", clusterName); err != nil {
			logf("stopping the cluster: %v", err)
		} else {
			logf("cluster %s stopped", clusterName)
		}
	}
	if e.tmp != "" {
		if m := mountsUnder(e.tmp); len(m) > 0 {
			logf("not removing %s: still mounted: %v", e.tmp, m)
		} else {
			_ = os.RemoveAll(e.tmp)
		}
	}
	if e.setupLog != nil {
		_ = e.setupLog.Close()
	}
}

// mountsUnder lists mount points at or below dir, deepest first; fuse
// selects FUSE mounts only, or all but FUSE mounts.
func mountsUnder(dir string, fuse ...bool) []string {
	data, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) < 5 || (f[4] != dir && !strings.HasPrefix(f[4], dir+"/")) {
			continue
		}
		if len(fuse) > 0 {
			_, post, _ := strings.Cut(l, " - ")
			isFuse := strings.HasPrefix(post, "fuse")
			if isFuse != fuse[0] {
				continue
			}
		}
		out = append(out, f[4])
	}
	sort.Sort(sort.Reverse(sort.StringSlice(out)))
	return out
}

// cleanNodeState takes down whatever is still mapped or mounted under dir
// (a failed or interrupted node part; Basalt's state dir and the baseline's
// directories are both there): the loop devices backed by files under dir
// are listed first (their backing path changes once the FUSE mount goes),
// then the filesystems are unmounted lazily, the loop devices detached, the
// rbd-fuse mounts unmounted, and rbd-fuse daemons still serving dir (started
// by our driver or by us) ended by PID.
func cleanNodeState(dir string) {
	run := func(name string, args ...string) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if out, err := execCommand(ctx, name, args...).CombinedOutput(); err != nil {
			logf("clean-up: %s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	out, _ := execCommand(ctx, "losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE").Output()
	cancel()
	var loops []string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) == 2 && strings.HasPrefix(f[1], dir+"/") {
			loops = append(loops, f[0])
		}
	}
	for _, m := range mountsUnder(dir, false) {
		run("umount", "-l", m)
	}
	for _, d := range loops {
		run("losetup", "-d", d)
	}
	for _, m := range mountsUnder(dir, true) {
		run("fusermount", "-u", "-z", m)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids := rbdFuseUnder(dir)
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			for _, p := range pids {
				logf("clean-up: ending rbd-fuse pid %d", p)
				_ = syscall.Kill(p, syscall.SIGKILL)
			}
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := len(loops); n > 0 {
		logf("clean-up: took down %d loop device(s) left under %s", n, dir)
	}
}

// runCmd runs one command with cmdTimeout and returns its trimmed output.
func runCmd(ctx context.Context, env []string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	cmd := execCommand(ctx, name, args...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// execCommand is exec.CommandContext that also stops waiting for the
// output of children that outlive the command.
func execCommand(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// machine describes where the numbers come from.
type machine struct {
	NProc       int    `json:"nproc"`
	MemTotalMiB int64  `json:"mem_total_mib"`
	Kernel      string `json:"kernel"`
	Ceph        string `json:"ceph_version"`
	Go          string `json:"go_version"`
	GitCommit   string `json:"git_commit"`
	GitDirty    bool   `json:"git_dirty"`
	Driver      string `json:"driver_version"`
	Host        string `json:"hostname"`
}

var (
	machineOnce sync.Once
	machineInfo machine
)

func getMachine(ctx context.Context, e *env) machine {
	machineOnce.Do(func() {
		m := machine{Go: goVersion()}
		m.NProc = nproc()
		if b, err := os.ReadFile("/proc/meminfo"); err == nil {
			for _, l := range strings.Split(string(b), "\n") {
				if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemTotal:" {
					kib, _ := strconv.ParseInt(f[1], 10, 64)
					m.MemTotalMiB = kib / 1024
				}
			}
		}
		m.Kernel = strings.TrimSpace(readFile("/proc/sys/kernel/osrelease"))
		m.Ceph, _ = runCmd(ctx, nil, "ceph", "--version")
		if out, err := runCmd(ctx, nil, "git", "-C", e.o.root, "rev-parse", "HEAD"); err == nil {
			m.GitCommit = out
		}
		if out, err := runCmd(ctx, nil, "git", "-C", e.o.root, "status", "--porcelain"); err == nil {
			m.GitDirty = out != ""
		}
		if e.ident != nil && !e.driverExited() {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if r, err := e.ident.GetPluginInfo(cctx, &csi.GetPluginInfoRequest{}); err == nil {
				m.Driver = r.GetName() + " " + r.GetVendorVersion()
			}
			cancel()
		}
		m.Host, _ = os.Hostname()
		machineInfo = m
	})
	return machineInfo
}

func nproc() int {
	if out, err := exec.Command("nproc").Output(); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil {
			return n
		}
	}
	return 0
}

// dialRados connects to the cluster of conf as admin.
func dialRados(ctx context.Context, conf, keyring string) (*rados.Conn, error) {
	conn, err := rados.NewConnWithUser("admin")
	if err != nil {
		return nil, err
	}
	if err := conn.ReadConfigFile(conf); err != nil {
		conn.Shutdown()
		return nil, fmt.Errorf("reading %s: %w", conf, err)
	}
	for k, v := range map[string]string{"keyring": keyring, "log_to_stderr": "false", "err_to_stderr": "false",
		"rados_osd_op_timeout": "30", "rados_mon_op_timeout": "30", "client_mount_timeout": "30"} {
		if err := conn.SetConfigOption(k, v); err != nil {
			conn.Shutdown()
			return nil, fmt.Errorf("setting %s: %w", k, err)
		}
	}
	if err := withDeadline(ctx, 60*time.Second, "connecting to the cluster", conn.Connect); err != nil {
		go conn.Shutdown()
		return nil, err
	}
	return conn, nil
}
