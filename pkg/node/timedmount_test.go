package node

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A mount(8) that hangs is killed at the deadline, with what it started,
// instead of being abandoned while it keeps running (and the node lock is
// released over it).
func TestHungMountIsKilled(t *testing.T) {
	dir := t.TempDir()
	script := "#!/bin/sh\necho $$ > " + dir + "/pid\nsleep 60 &\necho $! > " + dir + "/child\nwait\n"
	for _, name := range []string{"mount", "umount"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
	old := CommandTimeout
	CommandTimeout = 300 * time.Millisecond
	defer func() { CommandTimeout = old }()

	for _, call := range []func() error{
		// An option of the user's: mount(8) runs (kernelMountArgs).
		func() error { return timedMounter{}.Mount("/dev/x", dir+"/t", "ext4", []string{"ro", "noatime"}) },
		func() error { return timedMounter{}.Mount("/a", dir+"/t", "", []string{"bind", "ro"}) },
		func() error { return timedMounter{}.Unmount(dir + "/t") },
	} {
		start := time.Now()
		err := call()
		if err == nil || !strings.Contains(err.Error(), "killed after") {
			t.Fatalf("hung command: %v", err)
		}
		if took := time.Since(start); took > 10*time.Second {
			t.Fatalf("returned after %v", took)
		}
		for _, f := range []string{"pid", "child"} {
			b, _ := os.ReadFile(filepath.Join(dir, f))
			pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			if pid <= 0 {
				t.Fatalf("%s not recorded", f)
			}
			deadline := time.Now().Add(5 * time.Second)
			for syscall.Kill(pid, 0) == nil {
				if time.Now().After(deadline) {
					t.Fatalf("%s %d still runs after the deadline", f, pid)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
}

func TestKernelMountArgs(t *testing.T) {
	for _, c := range []struct {
		opts  []string
		flags uintptr
		data  string
		ok    bool
	}{
		{nil, 0, "", true},
		{[]string{"defaults"}, 0, "", true},
		{[]string{"nouuid", "defaults"}, 0, "nouuid", true},
		{[]string{"ro", "noload", "defaults"}, unix.MS_RDONLY, "noload", true},
		{[]string{"ro", "nouuid", "norecovery"}, unix.MS_RDONLY, "nouuid,norecovery", true},
		{[]string{"noatime"}, 0, "", false}, // a user's mountOptions: mount(8)
		{[]string{"defaults", "discard"}, 0, "", false},
	} {
		flags, data, ok := kernelMountArgs(c.opts)
		if flags != c.flags || data != c.data || ok != c.ok {
			t.Errorf("kernelMountArgs(%q) = %#x, %q, %v; want %#x, %q, %v", c.opts, flags, data, ok, c.flags, c.data, c.ok)
		}
	}
}
