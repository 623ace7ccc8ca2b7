package mapper

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestBackedByMatchesTheFileAsItIsNow(t *testing.T) {
	file := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	dev := fmt.Sprintf("%d:%d", unix.Major(sys.Dev), unix.Minor(sys.Dev))
	all := []loopDev{
		{Name: "/dev/loop0", BackFile: file, BackIno: sys.Ino, BackDev: dev},
		{Name: "/dev/loop1", BackFile: file + " (deleted)", BackIno: sys.Ino + 1, BackDev: dev}, // a dead daemon's file
		{Name: "/dev/loop2", BackFile: "/elsewhere", BackIno: sys.Ino, BackDev: "0:999"},
	}
	got := backedBy(all, file)
	if len(got) != 1 || got[0].Name != "/dev/loop0" {
		t.Errorf("backedBy = %v, want only /dev/loop0", got)
	}
	if got := backedBy(all, file+".gone"); got != nil {
		t.Errorf("a missing file is backed by %v", got)
	}
}

func TestMapWaitsForAReapOfItsDirectory(t *testing.T) {
	f := NewFUSE(Exec{}, t.TempDir())
	dir := f.dir(Spec{Pool: "p", Image: "i"})
	done := make(chan struct{})
	f.reaping[dir] = done
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := f.awaitReap(ctx, dir); err == nil {
		t.Fatal("awaitReap returned while the reap was running")
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		close(done)
	}()
	if err := f.awaitReap(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	if err := f.awaitReap(context.Background(), f.dir(Spec{Pool: "p", Image: "other"})); err != nil {
		t.Fatalf("another image waited: %v", err)
	}
}

// TestCheckAsksTheLoopDevice: with a real loop device on a plain file
// (standing in for rbd-fuse's), Check passes while the device is backed by
// the file as it is now, and reports the mapping gone once the file is
// replaced (a new daemon's file) or the device detached.
func TestCheckAsksTheLoopDevice(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a loop device")
	}
	f := NewFUSE(Exec{}, t.TempDir())
	s := Spec{Pool: "p", Image: "img"}
	dir := f.dir(s)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, s.Image)
	if err := os.WriteFile(file, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := Exec{}.Run(context.Background(), "losetup", "--find", "--show", file)
	if err != nil {
		t.Fatal(err)
	}
	dev := strings.TrimSpace(string(out))
	detached := false
	t.Cleanup(func() {
		if !detached {
			_, _ = Exec{}.Run(context.Background(), "losetup", "-d", dev)
		}
	})
	m := Mapping{Mapper: "fuse", Dir: dir, Device: dev}
	if err := f.Check(context.Background(), s, m); err != nil {
		t.Fatalf("live mapping: %v", err)
	}
	// A new file at the same path: the device is backed by the old one.
	if err := os.Rename(file, file+".old"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := f.Check(context.Background(), s, m); !errors.Is(err, ErrGone) {
		t.Fatalf("device on a replaced file: %v, want ErrGone", err)
	}
	if err := os.Rename(file+".old", file); err != nil {
		t.Fatal(err)
	}
	if err := f.Check(context.Background(), s, m); err != nil {
		t.Fatalf("file back: %v", err)
	}
	if _, err := (Exec{}).Run(context.Background(), "losetup", "-d", dev); err != nil {
		t.Fatal(err)
	}
	detached = true
	if err := f.Check(context.Background(), s, m); !errors.Is(err, ErrGone) {
		t.Fatalf("detached device: %v, want ErrGone", err)
	}
}
