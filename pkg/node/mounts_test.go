package node

import (
	"reflect"
	"testing"

	"k8s.io/mount-utils"
)

func TestMountedAt(t *testing.T) {
	mis := []mount.MountInfo{
		{MountPoint: "/", Root: "/", Major: 8, Minor: 1, Source: "/dev/sda1"},
		{MountPoint: "/dev", Root: "/", Major: 0, Minor: 5, Source: "udev", FsType: "devtmpfs"},
		{MountPoint: "/staging", Root: "/", Major: 7, Minor: 3, Source: "/dev/loop3", FsType: "ext4"},
		{MountPoint: "/pod/vol", Root: "/", Major: 7, Minor: 3, Source: "/dev/loop3", FsType: "ext4"},
		// Block publishes: binds of device nodes, source "udev".
		{MountPoint: "/pod/dev3", Root: "/loop3", Major: 0, Minor: 5, Source: "udev", FsType: "devtmpfs"},
		{MountPoint: "/pod/dev4", Root: "/loop4", Major: 0, Minor: 5, Source: "udev", FsType: "devtmpfs"},
		{MountPoint: "/other", Root: "/", Major: 7, Minor: 4, Source: "/dev/loop4", FsType: "xfs"},
	}
	if got, want := mountedAt(mis, "/dev/loop3", 7, 3), []string{"/staging", "/pod/vol", "/pod/dev3"}; !reflect.DeepEqual(got, want) {
		t.Errorf("/dev/loop3 mounted at %v, want %v", got, want)
	}
	if got, want := mountedAt(mis, "/dev/loop4", 7, 4), []string{"/pod/dev4", "/other"}; !reflect.DeepEqual(got, want) {
		t.Errorf("/dev/loop4 mounted at %v, want %v", got, want)
	}
	if got := mountedAt(mis, "/dev/loop5", 7, 5); len(got) != 0 {
		t.Errorf("/dev/loop5 mounted at %v, want nowhere", got)
	}
}
