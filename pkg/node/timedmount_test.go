package node

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
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
		func() error { return timedMounter{}.Mount("/dev/x", dir+"/t", "ext4", []string{"ro"}) },
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
