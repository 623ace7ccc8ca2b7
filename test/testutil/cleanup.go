// Package testutil holds what several test packages need: tearing down node
// state that a killed node plugin left behind, so a failed test does not
// leave FUSE daemons, loop devices or mounts that hang later tests.
package testutil

import (
	"os"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/basalt-csi/basalt/pkg/node/mapper"
)

// RBDFusePIDs lists rbd-fuse daemons whose mount point is under dir.
func RBDFusePIDs(dir string) []int {
	return mapper.RBDFusePIDs(func(mp string) bool { return strings.HasPrefix(mp, dir+"/") })
}

// mountsUnder lists mount points under (or at) any of dirs, deepest first.
func mountsUnder(dirs ...string) []string {
	data, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) < 5 {
			continue
		}
		for _, d := range dirs {
			if f[4] == d || strings.HasPrefix(f[4], d+"/") {
				out = append(out, f[4])
			}
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(out)))
	return out
}

// CleanNodeState ends the rbd-fuse daemons of a node plugin whose state
// directory is stateDir (all started by the test, ended by PID), then
// lazily unmounts everything under dirs and stateDir and detaches loop
// devices backed by files under stateDir. Killing the daemons first makes
// any request stuck on them fail instead of hanging the clean-up.
func CleanNodeState(stateDir string, dirs ...string) {
	// The loop devices first, while their back files (in rbd-fuse mounts
	// under stateDir) still resolve to paths under it.
	out, _ := exec.Command("timeout", "20", "losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE").Output()
	var loops []string
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		// Also loops left on a dead rbd-fuse's file ("/basalt-<uuid> (deleted)").
		if len(f) >= 2 && (strings.Contains(f[1], stateDir) || strings.HasPrefix(f[1], "/basalt-") && strings.HasSuffix(l, "(deleted)")) {
			loops = append(loops, f[0])
		}
	}
	for _, pid := range RBDFusePIDs(stateDir) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	time.Sleep(200 * time.Millisecond)
	for _, m := range mountsUnder(append(dirs, stateDir)...) {
		_ = exec.Command("umount", "-l", m).Run()
	}
	for _, l := range loops {
		_ = exec.Command("timeout", "20", "losetup", "-d", l).Run()
	}
}
