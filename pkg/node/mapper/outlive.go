package mapper

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
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
//
// Hierarchies where the daemon already is in the root cgroup (a plugin run
// outside a container is in most) are left alone: each write takes the
// kernel's cgroup lock, several milliseconds with its RCU wait, even when
// it moves nothing.
func Outlive(pid int) error {
	procs := cgroupProcsFiles(cgroupRoot)
	if len(procs) == 0 {
		return fmt.Errorf("no cgroup hierarchy under %s", cgroupRoot)
	}
	own, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid)) // unreadable: move in every hierarchy
	root := atRoot(string(own))
	var errs []error
	for _, p := range procs {
		if root[hierarchyOf(cgroupRoot, p)] {
			continue
		}
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

// atRoot lists the hierarchies in which a /proc/<pid>/cgroup text places
// the process in the root cgroup, named as hierarchyOf names them: the v1
// controllers sorted ("cpu,cpuacct"), a named hierarchy by its name
// ("systemd"), the v2 hierarchy as "".
func atRoot(procCgroup string) map[string]bool {
	out := map[string]bool{}
	for _, l := range strings.Split(procCgroup, "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) != 3 || f[2] != "/" {
			continue
		}
		out[hierarchyName(strings.TrimPrefix(f[1], "name="))] = true
	}
	return out
}

// hierarchyOf names the hierarchy of procs, a file cgroupProcsFiles
// listed: its directory under root, symlinks resolved ("" for root itself
// and for v1 hybrid's "unified", both the v2 hierarchy).
func hierarchyOf(root, procs string) string {
	dir := filepath.Dir(procs)
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	}
	if realRoot, err := filepath.EvalSymlinks(root); err == nil && dir == realRoot {
		return ""
	}
	if name := filepath.Base(dir); name != "unified" {
		return hierarchyName(name)
	}
	return ""
}

// hierarchyName sorts a comma list of controllers.
func hierarchyName(s string) string {
	parts := strings.Split(s, ",")
	sort.Strings(parts)
	return strings.Join(parts, ",")
}
