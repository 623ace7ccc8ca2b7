package mapper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// FUSE maps an image with `rbd-fuse -p POOL -r IMAGE DIR`, which exposes the
// image as the file DIR/IMAGE, and `losetup`, which turns that file into a
// real block device. It needs neither the rbd nor the nbd kernel module.
//
// rbd-fuse is a userspace daemon: it is moved out of the plugin's cgroup so
// that it outlives the plugin's container (Outlive). If it dies all the
// same, the file and the loop device above it stop working; Check reports
// that, and the node plugin then re-maps and re-mounts in place.
type FUSE struct {
	r       Runner
	baseDir string // mount points: baseDir/<pool>/<image>
	timeout time.Duration
}

// rbdFuseOpTimeout (seconds) bounds each librados call of an rbd-fuse daemon.
const rbdFuseOpTimeout = 60

// NewFUSE returns a fuse mapper keeping its mount points under baseDir.
func NewFUSE(r Runner, baseDir string) *FUSE {
	return &FUSE{r: r, baseDir: baseDir, timeout: DefaultTimeout}
}

// Name implements Mapper.
func (f *FUSE) Name() string { return "fuse" }

func (f *FUSE) dir(s Spec) string { return filepath.Join(f.baseDir, s.Pool, s.Image) }

// Map implements Mapper.
func (f *FUSE) Map(ctx context.Context, s Spec) (Mapping, error) {
	dir := f.dir(s)
	file := filepath.Join(dir, s.Image)
	if err := f.ensureFUSE(ctx, s, dir, file); err != nil {
		return Mapping{}, err
	}
	m := Mapping{Mapper: f.Name(), Dir: dir}
	loops, err := f.loopsFor(ctx, file)
	if err != nil {
		return Mapping{}, err
	}
	if len(loops) > 0 {
		m.Device = loops[0].Name
		return m, nil
	}
	args := []string{"--find", "--show"}
	if s.ReadOnly {
		args = append(args, "--read-only")
	}
	out, err := f.r.Run(ctx, "losetup", append(args, file)...)
	if err != nil {
		return Mapping{}, fmt.Errorf("attaching a loop device to %s: %w", file, err)
	}
	m.Device = strings.TrimSpace(string(out))
	if !strings.HasPrefix(m.Device, "/dev/loop") {
		return Mapping{}, fmt.Errorf("losetup printed %q, not a loop device", m.Device)
	}
	return m, nil
}

// ensureFUSE makes sure a live rbd-fuse serves dir, replacing a dead one.
func (f *FUSE) ensureFUSE(ctx context.Context, s Spec, dir, file string) error {
	if fileAlive(file) {
		return nil
	}
	if IsMountPoint(dir) {
		// A dead rbd-fuse leaves its mount behind ("transport endpoint is not connected").
		if _, err := f.r.Run(ctx, "fusermount", "-u", "-z", dir); err != nil {
			return fmt.Errorf("clearing the dead rbd-fuse mount at %s: %w", dir, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := f.startRBDFuse(ctx, s, dir); err != nil {
		return err
	}
	for _, pid := range daemonsFor(dir) {
		_ = Outlive(pid) // best effort: see Outlive
	}
	// rbd-fuse returns once mounted; give the kernel a moment to show the file.
	deadline := time.Now().Add(10 * time.Second)
	for !fileAlive(file) {
		if time.Now().After(deadline) {
			return fmt.Errorf("rbd-fuse mounted %s but %s did not appear", dir, file)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// startRBDFuse runs rbd-fuse, which daemonises after mounting. Its output
// goes to a file (not a pipe the daemon would keep open), and the
// credentials go through CEPH_ARGS as a keyring path.
func (f *FUSE) startRBDFuse(ctx context.Context, s Spec, dir string) error {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	logPath := dir + ".log"
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.CommandContext(ctx, "rbd-fuse", "-c", s.CephConf, "-p", s.Pool, "-r", s.Image, dir)
	// Op timeouts make a lost cluster fail I/O instead of hanging it forever:
	// a hung FUSE request blocks every process that so much as stats the
	// loop device (mkfs, losetup --list, ...).
	cmd.Env = append(os.Environ(), fmt.Sprintf("CEPH_ARGS=--id %s --keyring %s --rados_osd_op_timeout %d --rados_mon_op_timeout %d --client_mount_timeout %d",
		s.User, s.Keyring, rbdFuseOpTimeout, rbdFuseOpTimeout, rbdFuseOpTimeout))
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own session: the daemon must not share the plugin's signals.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Run(); err != nil {
		out, _ := os.ReadFile(logPath)
		if ctx.Err() != nil {
			return fmt.Errorf("rbd-fuse %s/%s: no answer within %v: %s", s.Pool, s.Image, f.timeout, lastLines(out))
		}
		return fmt.Errorf("rbd-fuse %s/%s: %v: %s", s.Pool, s.Image, err, lastLines(out))
	}
	return nil
}

// Unmap implements Mapper: detach the loop device(s) of the image, then
// unmount the FUSE mount and remove its directory.
func (f *FUSE) Unmap(ctx context.Context, s Spec, m Mapping) error {
	dir := m.Dir
	if dir == "" {
		dir = f.dir(s)
	}
	file := filepath.Join(dir, s.Image)
	all, err := f.loops(ctx)
	if err != nil {
		return err
	}
	live, err := f.loopsFor(ctx, file)
	if err != nil {
		return err
	}
	for _, l := range all {
		// The recorded device, even if its rbd-fuse died (its backing path then
		// changes), and any device backed by the image file now.
		// (A dead daemon's file shows as "/<image> (deleted)".)
		ours := l.Name == m.Device && filepath.Base(strings.TrimSuffix(l.BackFile, " (deleted)")) == s.Image
		for _, o := range live {
			ours = ours || o.Name == l.Name
		}
		if !ours {
			continue
		}
		if _, err := f.r.Run(ctx, "losetup", "-d", l.Name); err != nil {
			return fmt.Errorf("detaching %s: %w", l.Name, err)
		}
	}
	if IsMountPoint(dir) {
		if _, err := f.r.Run(ctx, "fusermount", "-u", dir); err != nil {
			// A dead daemon's mount needs a lazy unmount.
			if _, err2 := f.r.Run(ctx, "fusermount", "-u", "-z", dir); err2 != nil {
				return fmt.Errorf("unmounting rbd-fuse at %s: %w", dir, err)
			}
		}
	}
	// rbd-fuse exits on its own once unmounted; wait for it so nothing
	// outlives the mapping, and end it (it serves only this mapping) if not.
	if err := waitGone(ctx, dir); err != nil {
		return err
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	_ = os.Remove(dir + ".log")
	_ = os.Remove(filepath.Dir(dir)) // the pool directory, if now empty
	return nil
}

// Check implements Mapper. The loop device must be backed by the very file
// rbd-fuse serves now (device and inode), not by a dead predecessor.
func (f *FUSE) Check(ctx context.Context, s Spec, m Mapping) error {
	file := filepath.Join(m.Dir, s.Image)
	if !fileAlive(file) {
		return Gone("rbd-fuse no longer serves %s", file)
	}
	loops, err := f.loopsFor(ctx, file)
	if err != nil {
		return err
	}
	for _, l := range loops {
		if l.Name == m.Device {
			return nil
		}
	}
	return Gone("loop device %s is no longer backed by %s", m.Device, file)
}

// List implements Mapper: every <base>/<pool>/<image> directory (an rbd-fuse
// mount point, live or dead) with the loop device backed by its file, and
// loop devices left on such files whose directory is gone.
func (f *FUSE) List(ctx context.Context) ([]Mapped, error) {
	loops, err := f.loops(ctx)
	if err != nil {
		return nil, err
	}
	byDir := map[string]*Mapped{}
	var order []string
	add := func(pool, image string) *Mapped {
		dir := filepath.Join(f.baseDir, pool, image)
		if byDir[dir] == nil {
			byDir[dir] = &Mapped{Spec{Pool: pool, Image: image}, Mapping{Mapper: f.Name(), Dir: dir}}
			order = append(order, dir)
		}
		return byDir[dir]
	}
	dirs, _ := filepath.Glob(filepath.Join(f.baseDir, "*", "*"))
	for _, d := range dirs {
		// A dead FUSE mount cannot be stat'ed, but is a mount point.
		if st, err := os.Lstat(d); (err == nil && st.IsDir()) || IsMountPoint(d) {
			add(filepath.Base(filepath.Dir(d)), filepath.Base(d))
		}
	}
	for _, l := range loops {
		// The back file is <base>/<pool>/<image>/<image> (a dead daemon's
		// file may show " (deleted)").
		back := strings.TrimSuffix(l.BackFile, " (deleted)")
		rel, err := filepath.Rel(f.baseDir, back)
		parts := strings.Split(rel, string(filepath.Separator))
		if err != nil || len(parts) != 3 || parts[0] == ".." {
			continue
		}
		m := add(parts[0], parts[1])
		if m.Mapping.Device == "" {
			m.Mapping.Device = l.Name
		}
	}
	out := make([]Mapped, 0, len(order))
	for _, d := range order {
		out = append(out, *byDir[d])
	}
	return out, nil
}

func fileAlive(file string) bool {
	st, err := os.Stat(file)
	return err == nil && st.Mode().IsRegular()
}

// IsMountPoint compares device numbers with the parent; a dead FUSE mount
// fails stat with ENOTCONN, which also means mounted.
func IsMountPoint(dir string) bool {
	st, err := os.Stat(dir)
	if err != nil {
		return errors.Is(err, syscall.ENOTCONN)
	}
	parent, err := os.Stat(filepath.Dir(dir))
	if err != nil {
		return false
	}
	return st.Sys().(*syscall.Stat_t).Dev != parent.Sys().(*syscall.Stat_t).Dev
}

type loopDev struct {
	Name     string `json:"name"`
	BackFile string `json:"back-file"`
	BackIno  uint64 `json:"back-ino"`
	BackDev  string `json:"back-maj:min"`
}

// loops lists the host's loop devices with what backs them.
func (f *FUSE) loops(ctx context.Context) ([]loopDev, error) {
	out, err := f.r.Run(ctx, "losetup", "--list", "--json", "--output", "NAME,BACK-FILE,BACK-INO,BACK-MAJ:MIN")
	if err != nil {
		return nil, fmt.Errorf("listing loop devices: %w", err)
	}
	if len(strings.TrimSpace(string(out))) == 0 {
		return nil, nil // no loop device at all
	}
	var l struct {
		Devices []loopDev `json:"loopdevices"`
	}
	if err := json.Unmarshal(out, &l); err != nil {
		return nil, fmt.Errorf("parsing losetup --json: %w", err)
	}
	return l.Devices, nil
}

// loopsFor lists the loop devices backed by file as it is now (same device
// and inode), which excludes devices left on a dead rbd-fuse's file.
func (f *FUSE) loopsFor(ctx context.Context, file string) ([]loopDev, error) {
	st, err := os.Stat(file)
	if err != nil {
		return nil, nil
	}
	sys := st.Sys().(*syscall.Stat_t)
	devID := fmt.Sprintf("%d:%d", unix.Major(sys.Dev), unix.Minor(sys.Dev))
	all, err := f.loops(ctx)
	if err != nil {
		return nil, err
	}
	var out []loopDev
	for _, l := range all {
		if l.BackIno == sys.Ino && strings.TrimSpace(l.BackDev) == devID {
			out = append(out, l)
		}
	}
	return out, nil
}

func lastLines(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return strings.Join(lines, " | ")
}

// RBDFusePIDs lists the rbd-fuse daemons whose mount point satisfies match.
func RBDFusePIDs(match func(mountPoint string) bool) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if filepath.Base(args[0]) == "rbd-fuse" && match(args[len(args)-1]) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// daemonsFor lists the rbd-fuse processes serving dir.
func daemonsFor(dir string) []int {
	return RBDFusePIDs(func(mp string) bool { return mp == dir })
}

func waitGone(ctx context.Context, dir string) error {
	deadline := time.Now().Add(10 * time.Second)
	signalled := false
	for {
		pids := daemonsFor(dir)
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			if signalled {
				return fmt.Errorf("rbd-fuse for %s (pids %v) does not exit", dir, pids)
			}
			for _, p := range pids {
				_ = syscall.Kill(p, syscall.SIGTERM)
			}
			signalled, deadline = true, time.Now().Add(5*time.Second)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Refresh implements the node's refresher: rbd-fuse reports the image's new
// size once librbd has seen the resize (a header notification), then the
// loop device is told (losetup --set-capacity).
func (f *FUSE) Refresh(ctx context.Context, s Spec, m Mapping, size int64) error {
	file := filepath.Join(m.Dir, s.Image)
	var now int64
	err := Poll(ctx, 30*time.Second, func() (bool, error) {
		st, err := os.Stat(file)
		if err != nil {
			return false, err
		}
		now = st.Size()
		return now >= size, nil
	})
	if errors.Is(err, ErrPollTimeout) {
		return fmt.Errorf("rbd-fuse still reports %d bytes for %s, not %d", now, file, size)
	}
	if err != nil {
		return err
	}
	_, err = f.r.Run(ctx, "losetup", "--set-capacity", m.Device)
	return err
}
