package node

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/mount-utils"

	"github.com/basalt-csi/basalt/pkg/metrics"
)

// timedMounter is mount-utils' mounter with mount(8) and umount(8) run
// under CommandTimeout and killed (with their process group) at it:
// mount-utils runs them without a deadline, so a hung mount would be
// abandoned but keep running after the node lock was released. The argument
// lists are mount-utils' own (MakeBindOptsSensitive, MakeMountArgsSensitive).
// A mount whose options need no interpreting is the mount(2) call instead
// (kernelMountArgs). Everything else (mount point checks, mountinfo) is
// mount-utils as is.
type timedMounter struct{ mount.Interface }

func (m timedMounter) Mount(source, target, fstype string, options []string) error {
	return m.MountSensitive(source, target, fstype, options, nil)
}

func (m timedMounter) MountSensitive(source, target, fstype string, options, sensitive []string) error {
	bind, bindOpts, remountOpts, remountSensitive := mount.MakeBindOptsSensitive(options, sensitive)
	if flags, data, ok := kernelMountArgs(options); !bind && ok && len(sensitive) == 0 && source != "" && fstype != "" {
		// What mount(8) would pass the kernel, without starting it (a
		// process start, and libmount reading mountinfo, on every stage).
		// The callers put their deadline on this call (withDeadline).
		if err := unix.Mount(source, target, fstype, flags, data); err != nil {
			return fmt.Errorf("mount -t %s -o %s %s %s: %w", fstype, strings.Join(options, ","), source, target, err)
		}
		return nil
	}
	if !bind {
		args, logged := mount.MakeMountArgsSensitive(source, target, fstype, options, sensitive)
		return runTimed("mount", args, logged)
	}
	// A bind mount, then a remount for its options (ro, ...), as mount-utils does.
	args, logged := mount.MakeMountArgsSensitive(source, target, fstype, bindOpts, nil)
	if err := runTimed("mount", args, logged); err != nil {
		return err
	}
	args, logged = mount.MakeMountArgsSensitive(source, target, fstype, remountOpts, remountSensitive)
	return runTimed("mount", args, logged)
}

// kernelMountArgs turns mount options into mount(2)'s flags and data when
// they are ones whose meaning is plain (the staging mount's: defaults,
// ro/rw, and the XFS and ext4 options the stage adds); ok is false for any
// other, which mount(8) then interprets (user-given mountOptions).
func kernelMountArgs(options []string) (flags uintptr, data string, ok bool) {
	var d []string
	for _, o := range options {
		switch o {
		case "defaults", "rw":
		case "ro":
			flags |= unix.MS_RDONLY
		case "nouuid", "noload", "norecovery":
			d = append(d, o)
		default:
			return 0, "", false
		}
	}
	return flags, strings.Join(d, ","), true
}

func (m timedMounter) MountSensitiveWithoutSystemd(source, target, fstype string, options, sensitive []string) error {
	return m.MountSensitive(source, target, fstype, options, sensitive)
}

func (m timedMounter) Unmount(target string) error {
	return runTimed("umount", []string{target}, target)
}

// runTimed runs name with args under CommandTimeout; at the deadline the
// command and everything it started are killed. logged replaces the
// arguments in errors (sensitive options stay out of logs).
func runTimed(name string, args []string, logged string) error {
	ctx, cancel := context.WithTimeout(context.Background(), CommandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	start := time.Now()
	out, err := cmd.CombinedOutput()
	metrics.ObserveCommand(name, time.Since(start), err != nil, ctx.Err() != nil)
	if ctx.Err() != nil {
		return fmt.Errorf("%s %s: killed after %v without an answer", name, logged, CommandTimeout)
	}
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, logged, err, strings.TrimSpace(string(out)))
	}
	return nil
}
