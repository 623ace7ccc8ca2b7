package node

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"k8s.io/mount-utils"

	"github.com/basalt-csi/basalt/pkg/metrics"
)

// timedMounter is mount-utils' mounter with mount(8) and umount(8) run
// under CommandTimeout and killed (with their process group) at it:
// mount-utils runs them without a deadline, so a hung mount would be
// abandoned but keep running after the node lock was released. The argument
// lists are mount-utils' own (MakeBindOptsSensitive, MakeMountArgsSensitive).
// Everything else (mount point checks, mountinfo) is mount-utils as is.
type timedMounter struct{ mount.Interface }

func (m timedMounter) Mount(source, target, fstype string, options []string) error {
	return m.MountSensitive(source, target, fstype, options, nil)
}

func (m timedMounter) MountSensitive(source, target, fstype string, options, sensitive []string) error {
	bind, bindOpts, remountOpts, remountSensitive := mount.MakeBindOptsSensitive(options, sensitive)
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
