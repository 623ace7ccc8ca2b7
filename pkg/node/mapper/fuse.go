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
	"sync"
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

	mu      sync.Mutex
	reaping map[string]chan struct{} // mount points whose rbd-fuse is being reaped
}

// rbdFuseOpTimeout (seconds) bounds each librados call of an rbd-fuse daemon.
const rbdFuseOpTimeout = 60

// NewFUSE returns a fuse mapper keeping its mount points under baseDir.
func NewFUSE(r Runner, baseDir string) *FUSE {
	return &FUSE{r: r, baseDir: baseDir, timeout: DefaultTimeout, reaping: map[string]chan struct{}{}}
}

// Name implements Mapper.
func (f *FUSE) Name() string { return "fuse" }

func (f *FUSE) dir(s Spec) string { return filepath.Join(f.baseDir, s.Pool, s.Image) }

// Map implements Mapper.
func (f *FUSE) Map(ctx context.Context, s Spec) (Mapping, error) {
	dir := f.dir(s)
	file := filepath.Join(dir, s.Image)
	if err := f.awaitReap(ctx, dir); err != nil {
		return Mapping{}, err
	}
	started, err := f.ensureFUSE(ctx, s, dir, file)
	if err != nil {
		return Mapping{}, err
	}
	m := Mapping{Mapper: f.Name(), Dir: dir}
	// A loop device on a file rbd-fuse already served is reused; a file
	// just made by a new daemon (a new inode) has none, so no need to look.
	if !started {
		loops, err := f.loopsFor(ctx, file)
		if err != nil {
			return Mapping{}, err
		}
		if len(loops) > 0 {
			m.Device = loops[0].Name
			return m, nil
		}
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

// ensureFUSE makes sure a live rbd-fuse serves dir, replacing a dead one;
// started tells whether it started one.
func (f *FUSE) ensureFUSE(ctx context.Context, s Spec, dir, file string) (started bool, err error) {
	if fileAlive(file) {
		return false, nil
	}
	if IsMountPoint(dir) {
		// A dead rbd-fuse leaves its mount behind ("transport endpoint is not connected").
		if _, err := f.r.Run(ctx, "fusermount", "-u", "-z", dir); err != nil {
			return false, fmt.Errorf("clearing the dead rbd-fuse mount at %s: %w", dir, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, err
	}
	parent, err := f.startRBDFuse(ctx, s, dir)
	if err != nil {
		return false, err
	}
	// Before returning, not in the background: moving a process between
	// cgroups takes the kernel's cgroup lock, which stalls the forks of the
	// commands that follow anyway (measured: no gain in the background).
	for _, pid := range daemonForkedBy(parent, dir) {
		_ = Outlive(pid) // best effort: see Outlive
	}
	// rbd-fuse returns once mounted; give the kernel a moment to show the file.
	deadline := time.Now().Add(10 * time.Second)
	for !fileAlive(file) {
		if time.Now().After(deadline) {
			return true, fmt.Errorf("rbd-fuse mounted %s but %s did not appear", dir, file)
		}
		time.Sleep(5 * time.Millisecond) // a stat: cheap, and the file is usually there within a few ms
	}
	return true, nil
}

// startRBDFuse runs rbd-fuse, which daemonises after mounting. Its output
// goes to a file (not a pipe the daemon would keep open), and the
// credentials go through CEPH_ARGS as a keyring path.
// It returns the PID of the process it started, which forked the daemon.
func (f *FUSE) startRBDFuse(ctx context.Context, s Spec, dir string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	logPath := dir + ".log"
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, err
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
			return 0, fmt.Errorf("rbd-fuse %s/%s: no answer within %v: %s", s.Pool, s.Image, f.timeout, lastLines(out))
		}
		return 0, fmt.Errorf("rbd-fuse %s/%s: %v: %s", s.Pool, s.Image, err, lastLines(out))
	}
	return cmd.Process.Pid, nil
}

// Unmap implements Mapper: detach the loop device(s) of the image, then
// unmount the FUSE mount, wait for its rbd-fuse to exit and remove its
// directory.
func (f *FUSE) Unmap(ctx context.Context, s Spec, m Mapping) error {
	dir, err := f.unmount(ctx, s, m)
	if err != nil {
		return err
	}
	return removeMount(ctx, dir)
}

// reapTimeout bounds a background reap: waitGone's 10 s for a clean exit
// and 5 s after SIGTERM, with room to spare.
const reapTimeout = 30 * time.Second

// UnmapAsync is Unmap without waiting for rbd-fuse to exit: when it returns
// the loop device is detached and the FUSE mount gone, which is all the
// caller's next step needs. The daemon exits on its own once unmounted
// (closing the image releases its watch), in about 50 ms; a goroutine waits
// for that (ending the daemon if it lingers), removes the directory, and
// then calls gone with the outcome, under a deadline of its own. A Map or
// Unmap of the same image waits for the reap first. If the plugin dies
// meanwhile, the unmounted daemon still exits; an empty directory is all
// that can be left, and the next Map of the image reuses it.
func (f *FUSE) UnmapAsync(ctx context.Context, s Spec, m Mapping, gone func(context.Context, error)) error {
	dir, err := f.unmount(ctx, s, m)
	if err != nil {
		return err
	}
	done := make(chan struct{})
	f.mu.Lock()
	f.reaping[dir] = done
	f.mu.Unlock()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), reapTimeout)
		defer cancel()
		err := removeMount(ctx, dir)
		f.mu.Lock()
		delete(f.reaping, dir)
		f.mu.Unlock()
		close(done)
		gone(ctx, err)
	}()
	return nil
}

// awaitReap waits until no reap of dir is running.
func (f *FUSE) awaitReap(ctx context.Context, dir string) error {
	f.mu.Lock()
	done := f.reaping[dir]
	f.mu.Unlock()
	if done == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for the previous rbd-fuse of %s to exit: %w", dir, ctx.Err())
	}
}

// unmount detaches the image's loop devices and unmounts its FUSE mount,
// returning the mount point.
func (f *FUSE) unmount(ctx context.Context, s Spec, m Mapping) (string, error) {
	dir := m.Dir
	if dir == "" {
		dir = f.dir(s)
	}
	if err := f.awaitReap(ctx, dir); err != nil {
		return "", err
	}
	if m.Device != "" && f.Check(ctx, s, Mapping{Dir: dir, Device: m.Device}) == nil {
		// The common case: the recorded device on the live file. Map
		// reuses a device already on the file, so there is no other one:
		// detach it without listing every loop device.
		if _, err := f.r.Run(ctx, "losetup", "-d", m.Device); err != nil {
			return "", fmt.Errorf("detaching %s: %w", m.Device, err)
		}
	} else if err := f.detachAll(ctx, s, m.Device, filepath.Join(dir, s.Image)); err != nil {
		return "", err
	}
	if IsMountPoint(dir) {
		if _, err := f.r.Run(ctx, "fusermount", "-u", dir); err != nil {
			// A dead daemon's mount needs a lazy unmount.
			if _, err2 := f.r.Run(ctx, "fusermount", "-u", "-z", dir); err2 != nil {
				return "", fmt.Errorf("unmounting rbd-fuse at %s: %w", dir, err)
			}
		}
	}
	return dir, nil
}

// detachAll detaches, from a listing of every loop device, device (even if
// its rbd-fuse died: its backing path then changes) and any device backed
// by file now: a mapping whose daemon died, or one whose device was never
// recorded.
func (f *FUSE) detachAll(ctx context.Context, s Spec, device, file string) error {
	all, err := f.loops(ctx)
	if err != nil {
		return err
	}
	live := backedBy(all, file)
	for _, l := range all {
		// A dead daemon's file shows as "/<image> (deleted)".
		ours := l.Name == device && filepath.Base(strings.TrimSuffix(l.BackFile, " (deleted)")) == s.Image
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
	return nil
}

// removeMount waits for the rbd-fuse of an unmounted dir to exit (it does
// on its own; it is ended if it lingers: it serves only this mapping), so
// nothing outlives the mapping, then removes the directory and its log.
func removeMount(ctx context.Context, dir string) error {
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
// rbd-fuse serves now (device and inode), not by a dead predecessor. The
// loop device is asked directly (LOOP_GET_STATUS64, as losetup does) rather
// than through a `losetup --list` of every device: the check runs at every
// NodeStage and NodePublish. Like the stat of the file before it, the ioctl
// stats the backing file, which a stalled rbd-fuse answers within its op
// timeouts.
func (f *FUSE) Check(ctx context.Context, s Spec, m Mapping) error {
	file := filepath.Join(m.Dir, s.Image)
	st, err := os.Stat(file)
	if err != nil || !st.Mode().IsRegular() {
		return Gone("rbd-fuse no longer serves %s", file)
	}
	info, err := loopStatus(m.Device)
	switch {
	case errors.Is(err, unix.ENXIO), errors.Is(err, os.ErrNotExist):
		return Gone("loop device %s is detached", m.Device)
	case err != nil:
		return fmt.Errorf("asking loop device %s for its backing file: %w", m.Device, err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	if info.Inode != sys.Ino || unix.Major(info.Device) != unix.Major(sys.Dev) || unix.Minor(info.Device) != unix.Minor(sys.Dev) {
		return Gone("loop device %s is no longer backed by %s", m.Device, file)
	}
	return nil
}

// loopStatus is the LOOP_GET_STATUS64 of the loop device dev.
func loopStatus(dev string) (*unix.LoopInfo64, error) {
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dev, Err: err}
	}
	defer unix.Close(fd)
	return unix.IoctlLoopGetStatus64(fd)
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
	if _, err := os.Stat(file); err != nil {
		return nil, nil
	}
	all, err := f.loops(ctx)
	if err != nil {
		return nil, err
	}
	return backedBy(all, file), nil
}

// backedBy keeps the loop devices of all backed by file as it is now.
func backedBy(all []loopDev, file string) []loopDev {
	st, err := os.Stat(file)
	if err != nil {
		return nil
	}
	sys := st.Sys().(*syscall.Stat_t)
	devID := fmt.Sprintf("%d:%d", unix.Major(sys.Dev), unix.Minor(sys.Dev))
	var out []loopDev
	for _, l := range all {
		if l.BackIno == sys.Ino && strings.TrimSpace(l.BackDev) == devID {
			out = append(out, l)
		}
	}
	return out
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
		if rbdFuseServing(pid, match) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// rbdFuseServing: pid is an rbd-fuse whose mount point (its last argument)
// satisfies match. comm is read first: reading it does not touch the
// process's memory, as reading cmdline does; only rbd-fuse processes have
// theirs read.
func rbdFuseServing(pid int, match func(mountPoint string) bool) bool {
	p := "/proc/" + strconv.Itoa(pid)
	if comm, err := os.ReadFile(p + "/comm"); err != nil || strings.TrimSpace(string(comm)) != "rbd-fuse" {
		return false
	}
	b, err := os.ReadFile(p + "/cmdline")
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	return filepath.Base(args[0]) == "rbd-fuse" && match(args[len(args)-1])
}

// daemonsFor lists the rbd-fuse processes serving dir.
func daemonsFor(dir string) []int {
	return RBDFusePIDs(func(mp string) bool { return mp == dir })
}

// daemonForkedBy finds the daemon serving dir that parent forked: the
// process IDs just above parent's are looked at first (PIDs are handed out
// in increasing order, so the fork is almost always among them), which
// spares reading every process's name in /proc, several milliseconds on a
// busy host; failing that (PIDs wrapped around), daemonsFor.
func daemonForkedBy(parent int, dir string) []int {
	for pid := parent + 1; pid <= parent+forkWindow; pid++ {
		if isRBDFuseLeader(pid, dir) {
			return []int{pid}
		}
	}
	return daemonsFor(dir)
}

// forkWindow is how many PIDs above its parent the daemon is looked for.
const forkWindow = 256

// isRBDFuseLeader: pid is a process (not one of a process's threads,
// whose /proc entries answer too, unlisted) of rbd-fuse serving dir.
func isRBDFuseLeader(pid int, dir string) bool {
	if !rbdFuseServing(pid, func(mp string) bool { return mp == dir }) {
		return false
	}
	st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	return err == nil && strings.Contains(string(st), "\nTgid:\t"+strconv.Itoa(pid)+"\n")
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
