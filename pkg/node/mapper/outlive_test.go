package mapper

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestCgroupProcsFiles(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"cpu,cpuacct", "memory", "unified", "systemd", "empty"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
		if d != "empty" {
			if err := os.WriteFile(filepath.Join(root, d, "cgroup.procs"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	// v1's aliases of a joint hierarchy count once.
	if err := os.Symlink("cpu,cpuacct", filepath.Join(root, "cpu")); err != nil {
		t.Fatal(err)
	}
	got := cgroupProcsFiles(root)
	want := []string{"cpu", "memory", "systemd", "unified"} // the alias sorts first
	for i, w := range want {
		want[i] = filepath.Join(root, w, "cgroup.procs")
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	// cgroup v2: the root's own cgroup.procs.
	v2 := t.TempDir()
	if err := os.WriteFile(filepath.Join(v2, "cgroup.procs"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if got := cgroupProcsFiles(v2); len(got) != 1 || got[0] != filepath.Join(v2, "cgroup.procs") {
		t.Fatalf("v2: %v", got)
	}
}

func TestAtRoot(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{"cpu,cpuacct", "memory", "unified", "systemd", "pids"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, d, "cgroup.procs"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("cpu,cpuacct", filepath.Join(root, "cpu")); err != nil {
		t.Fatal(err)
	}
	// A process in a pod's cgroups except for cpu,cpuacct, systemd and v2.
	proc := "12:pids:/kubepods/pod1/c1\n9:name=systemd:/\n4:memory:/kubepods/pod1/c1\n2:cpuacct,cpu:/\n0::/\n"
	r := atRoot(proc)
	var moved []string
	for _, p := range cgroupProcsFiles(root) {
		if !r[hierarchyOf(root, p)] {
			moved = append(moved, filepath.Base(filepath.Dir(p)))
		}
	}
	if want := []string{"memory", "pids"}; !reflect.DeepEqual(moved, want) {
		t.Fatalf("moved in %v, want %v", moved, want)
	}
	// Unreadable: every hierarchy.
	if r := atRoot(""); len(r) != 0 {
		t.Fatalf("atRoot(\"\") = %v", r)
	}
	// cgroup v2: the root's own cgroup.procs is the v2 hierarchy.
	v2 := t.TempDir()
	if got := hierarchyOf(v2, filepath.Join(v2, "cgroup.procs")); got != "" {
		t.Fatalf("v2 root: %q", got)
	}
}
