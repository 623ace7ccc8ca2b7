package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/basalt-csi/basalt/pkg/metrics"
)

// CommandTimeout bounds every command the node runs through mount-utils
// (mount, umount, mkfs, fsck, blkid, resize2fs, xfs_growfs).
var CommandTimeout = 2 * time.Minute

// timedExec gives every command mount-utils runs through Exec a deadline,
// and times it for the metrics.
type timedExec struct{ utilexec.Interface }

func (e timedExec) Command(cmd string, args ...string) utilexec.Cmd {
	ctx, cancel := context.WithTimeout(context.Background(), CommandTimeout)
	time.AfterFunc(CommandTimeout+time.Second, cancel)
	return timedCmd{e.Interface.CommandContext(ctx, cmd, args...), ctx, cmd}
}

// timedCmd observes the ways mount-utils runs a command.
type timedCmd struct {
	utilexec.Cmd
	ctx  context.Context
	name string
}

func (c timedCmd) observe(start time.Time, err error) {
	metrics.ObserveCommand(c.name, time.Since(start), err != nil, c.ctx.Err() == context.DeadlineExceeded)
}

func (c timedCmd) Run() error {
	start := time.Now()
	err := c.Cmd.Run()
	c.observe(start, err)
	return err
}

func (c timedCmd) CombinedOutput() ([]byte, error) {
	start := time.Now()
	out, err := c.Cmd.CombinedOutput()
	c.observe(start, err)
	return out, err
}

func (c timedCmd) Output() ([]byte, error) {
	start := time.Now()
	out, err := c.Cmd.Output()
	c.observe(start, err)
	return out, err
}

// Mounts wraps mount-utils so that every call has a deadline: mount(8),
// umount(8) and the commands mount-utils runs through Exec are killed at
// CommandTimeout (timedMounter, timedExec); what else could block (reading
// mountinfo) is abandoned at the deadline and reported.
type Mounts struct {
	m *mount.SafeFormatAndMount
}

// NewMounts returns the host's mounter.
func NewMounts() *Mounts {
	ex := timedExec{utilexec.New()}
	return &Mounts{m: &mount.SafeFormatAndMount{Interface: timedMounter{mount.New("")}, Exec: ex}}
}

func withDeadline(ctx context.Context, what string, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, CommandTimeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("%s: no answer within %v", what, CommandTimeout)
	}
}

// formatOptions avoid discarding a thin RBD image block by block at mkfs
// time (slow, and pointless on a fresh image), and defer inode-table work.
func formatOptions(fs string) []string {
	switch fs {
	case "xfs":
		return []string{"-K"}
	default:
		return []string{"-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1"}
	}
}

// FormatAndMount mounts dev at target, formatting it with fs if it is blank.
func (m *Mounts) FormatAndMount(ctx context.Context, dev, target, fs string, opts []string) error {
	return withDeadline(ctx, "mounting "+dev, func() error {
		return m.m.FormatAndMountSensitiveWithFormatOptions(dev, target, fs, opts, nil, formatOptions(fs))
	})
}

// DiskFormat is the filesystem blkid finds on dev ("" when blank).
func (m *Mounts) DiskFormat(ctx context.Context, dev string) (string, error) {
	var format string
	err := withDeadline(ctx, "probing "+dev, func() error {
		var err error
		format, err = m.m.GetDiskFormat(dev)
		return err
	})
	return format, err
}

// FormatBlankAndMount formats dev, which DiskFormat just found blank, with
// fs and mounts it: what FormatAndMount does for a blank device, without
// probing it a second time (the stage already did, for the offline grow).
// The arguments are mount-utils' own.
func (m *Mounts) FormatBlankAndMount(ctx context.Context, dev, target, fs string, opts []string) error {
	args := []string{dev}
	switch fs {
	case "ext4", "ext3":
		args = []string{"-F", "-m0", dev}
	case "xfs":
		args = []string{"-f", dev}
	}
	args = append(formatOptions(fs), args...)
	if out, err := m.m.Exec.Command("mkfs."+fs, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("format of %s as %s failed: %v: %s", dev, fs, err, strings.TrimSpace(string(out)))
	}
	return m.Mount(ctx, dev, target, fs, append(append([]string(nil), opts...), "defaults"))
}

// Bind bind-mounts source at target, read-only with ro. Without mount
// flags it is the mount(2) system call (and a read-only remount): mount-utils
// runs mount(8) twice for every bind (the bind, then a remount applying the
// options, even when there are none), which cost NodePublishVolume two
// process starts. With flags, mount-utils does it.
func (m *Mounts) Bind(ctx context.Context, source, target string, ro bool, flags []string) error {
	if len(flags) > 0 {
		opts := append([]string{"bind"}, flags...)
		if ro {
			opts = append(opts, "ro")
		}
		return m.Mount(ctx, source, target, "", opts)
	}
	return withDeadline(ctx, "bind-mounting "+source, func() error {
		if err := unix.Mount(source, target, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("mount --bind %s %s: %w", source, target, err)
		}
		if !ro {
			return nil
		}
		if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			_ = unix.Unmount(target, 0) // never leave it writable
			return fmt.Errorf("mount -o remount,bind,ro %s: %w", target, err)
		}
		return nil
	})
}

// Mount runs mount(8).
func (m *Mounts) Mount(ctx context.Context, source, target, fs string, opts []string) error {
	return withDeadline(ctx, "mounting "+source, func() error { return m.m.Mount(source, target, fs, opts) })
}

// Unmount unmounts target if it is mounted.
func (m *Mounts) Unmount(ctx context.Context, target string) error {
	mounted, err := m.IsMounted(target)
	if err != nil || !mounted {
		return err
	}
	return withDeadline(ctx, "unmounting "+target, func() error { return m.m.Unmount(target) })
}

// UnmountLazy detaches target even if busy or its device is dead.
func (m *Mounts) UnmountLazy(ctx context.Context, target string) error {
	return runTimed("umount", []string{"-l", target}, "-l "+target)
}

// IsMounted reports whether path is a mount point. A path that does not
// exist is not mounted; one whose mount is broken is.
func (m *Mounts) IsMounted(path string) (bool, error) {
	ok, err := m.m.IsMountPoint(path)
	if err != nil {
		if os.IsNotExist(err) {
			return false, nil
		}
		if mount.IsCorruptedMnt(err) {
			return true, nil
		}
		return false, err
	}
	return ok, nil
}

// SourceOf returns the device mounted at path ("" if none), from mountinfo.
func (m *Mounts) SourceOf(path string) (string, error) {
	mps, err := m.m.List()
	if err != nil {
		return "", err
	}
	path = filepath.Clean(path)
	src := ""
	for _, mp := range mps {
		if mp.Path == path {
			src = mp.Device // the last one wins: it is on top
		}
	}
	return src, nil
}

// MountedAt lists where dev is mounted: filesystems on it (whatever name
// mountinfo gives the source) and binds of its device node, which mountinfo
// shows with the source of the filesystem holding the node ("udev" for
// devtmpfs) and the node's path within it as root.
func (m *Mounts) MountedAt(dev string) ([]string, error) {
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, nil // no device node: nothing can be mounted from it
		}
		return nil, fmt.Errorf("stat %s: %w", dev, err)
	}
	mis, err := mount.ParseMountInfo(mountInfoPath)
	if err != nil {
		return nil, err
	}
	return mountedAt(mis, dev, int(unix.Major(st.Rdev)), int(unix.Minor(st.Rdev))), nil
}

const mountInfoPath = "/proc/self/mountinfo"

// mountedAt is MountedAt's pure part: major:minor is dev's device number.
func mountedAt(mis []mount.MountInfo, dev string, major, minor int) []string {
	// The mount holding the node (the deepest mount point above it, the
	// last of those stacked there: the visible one), and the
	// node's path from that filesystem's root: a bind of the node has that
	// filesystem's device number and that path as its root.
	var holder *mount.MountInfo
	for i := range mis {
		mp := mis[i].MountPoint
		if (mp == "/" || dev == mp || strings.HasPrefix(dev, mp+"/")) && (holder == nil || len(mp) >= len(holder.MountPoint)) {
			holder = &mis[i]
		}
	}
	nodeRoot := ""
	if holder != nil {
		rel, err := filepath.Rel(holder.MountPoint, dev)
		if err == nil {
			nodeRoot = filepath.Join(holder.Root, rel)
		}
	}
	var out []string
	for _, mi := range mis {
		onDev := mi.Major == major && mi.Minor == minor
		bindOfNode := holder != nil && mi.Major == holder.Major && mi.Minor == holder.Minor && filepath.Clean(mi.Root) == nodeRoot
		if onDev || bindOfNode {
			out = append(out, mi.MountPoint)
		}
	}
	return out
}

// Resize grows the filesystem on dev mounted at path if the device is larger.
func (m *Mounts) Resize(ctx context.Context, dev, path string) (bool, error) {
	r := mount.NewResizeFs(m.m.Exec)
	var grew bool
	err := withDeadline(ctx, "resizing "+dev, func() error {
		need, err := r.NeedResize(dev, path)
		if err != nil || !need {
			return err
		}
		grew = true
		_, err = r.Resize(dev, path)
		return err
	})
	return grew, err
}

func isCorrupted(err error) bool {
	return err != nil && (mount.IsCorruptedMnt(err) || strings.Contains(err.Error(), "transport endpoint is not connected"))
}

// GrowExt4Offline grows an unmounted ext2/3/4 filesystem (format, as
// DiskFormat found it) on dev to fill the device (e2fsck -f, then resize2fs). Growing before the first mount needs
// no CAP_SYS_RESOURCE, which online resize does, and is what a clone from a
// small golden image needs anyway. It reports whether it grew anything.
func (m *Mounts) GrowExt4Offline(ctx context.Context, dev, format string) (bool, error) {
	if format != "ext4" && format != "ext3" && format != "ext2" {
		return false, nil
	}
	fsBytes, err := m.ext4Size(dev)
	if err != nil {
		return false, err
	}
	devBytes, err := deviceSize(dev)
	if err != nil {
		return false, err
	}
	// resize2fs works in whole blocks; less than 1 MiB of slack is not worth it.
	if devBytes-fsBytes < 1<<20 {
		return false, nil
	}
	// resize2fs insists on a freshly checked filesystem. -p repairs only what
	// is safe; exit codes 0 and 1 mean clean or fixed.
	if out, err := m.m.Exec.Command("e2fsck", "-f", "-p", dev).CombinedOutput(); err != nil {
		if ee, ok := err.(utilexec.ExitError); !ok || ee.ExitStatus() > 1 {
			return false, fmt.Errorf("e2fsck -f -p %s: %v: %s", dev, err, strings.TrimSpace(string(out)))
		}
	}
	if out, err := m.m.Exec.Command("resize2fs", dev).CombinedOutput(); err != nil {
		return false, fmt.Errorf("resize2fs %s: %v: %s", dev, err, strings.TrimSpace(string(out)))
	}
	return true, nil
}

func (m *Mounts) ext4Size(dev string) (int64, error) {
	out, err := m.m.Exec.Command("dumpe2fs", "-h", dev).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("dumpe2fs -h %s: %v", dev, err)
	}
	var blocks, size int64
	for _, l := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "Block count":
			fmt.Sscan(strings.TrimSpace(v), &blocks)
		case "Block size":
			fmt.Sscan(strings.TrimSpace(v), &size)
		}
	}
	if blocks == 0 || size == 0 {
		return 0, fmt.Errorf("dumpe2fs -h %s: no block count or size", dev)
	}
	return blocks * size, nil
}
