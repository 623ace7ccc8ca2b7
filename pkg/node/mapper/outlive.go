package mapper

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// cgroupRoot is where the host's cgroup hierarchies are mounted (the node
// DaemonSet mounts the host's /sys).
var cgroupRoot = "/sys/fs/cgroup"

// Outlive moves the mapper daemon pid (rbd-fuse, rbd-nbd) into the root
// cgroup of every hierarchy, out of the node plugin's. A container runtime
// ends a container by killing every process of its cgroup; a daemon that
// serves a mounted volume must outlive the plugin's container, as a krbd
// mapping lives in the kernel, or every volume of the node breaks each time
// the plugin restarts (ceph-csi's rbd-nbd and ceph-fuse mounts do). The
// DaemonSet's hostPID keeps the daemon out of the container's PID namespace.
//
// Best effort: where it cannot (no privilege, no cgroup files), the daemon
// keeps the plugin's lifetime and the restarted plugin re-maps in place.
func Outlive(pid int) error {
	procs := cgroupProcsFiles(cgroupRoot)
	if len(procs) == 0 {
		return fmt.Errorf("no cgroup hierarchy under %s", cgroupRoot)
	}
	var errs []error
	for _, p := range procs {
		if err := os.WriteFile(p, []byte(strconv.Itoa(pid)), 0); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// cgroupProcsFiles lists the root cgroup.procs of each hierarchy under
// root: the unified one (cgroup v2, or v1 hybrid's root/unified) and each
// v1 controller's (root/<controller>; a named hierarchy such as
// root/systemd too). Symlinked controller aliases (cpu -> cpu,cpuacct) are
// listed once.
func cgroupProcsFiles(root string) []string {
	var out []string
	seen := map[string]bool{}
	add := func(p string) {
		real, err := filepath.EvalSymlinks(p)
		if err != nil || seen[real] {
			return
		}
		seen[real] = true
		out = append(out, p)
	}
	add(filepath.Join(root, "cgroup.procs"))
	matches, _ := filepath.Glob(filepath.Join(root, "*", "cgroup.procs"))
	for _, m := range matches {
		add(m)
	}
	return out
}
