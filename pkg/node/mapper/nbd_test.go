package mapper

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// nbdListJSON is shaped like Pacific's `rbd-nbd list-mapped --format json`
// (id is the rbd-nbd pid; snap is "" for the image head).
const nbdListJSON = `[{"id":4101,"pool":"kube","namespace":"","image":"other","snap":"","device":"/dev/nbd0","cookie":"c-other"},` +
	`{"id":4102,"pool":"kube","namespace":"","image":"vol1","snap":"snap1","device":"/dev/nbd1","cookie":"c-snap"},` +
	`{"id":4103,"pool":"kube","namespace":"","image":"vol1","snap":"","device":"/dev/nbd2","cookie":"c-vol1"}]`

const nbdListCmd = "rbd-nbd list-mapped --format json"

// nbdReplies answers list-mapped with the lists in turn (the last one
// repeating) and other commands from cmds by verb.
func nbdReplies(lists []string, cmds map[string]nbdReply) func([]string) ([]byte, error) {
	n := 0
	return func(argv []string) ([]byte, error) {
		if argv[1] == "list-mapped" {
			l := lists[min(n, len(lists)-1)]
			n++
			return []byte(l), nil
		}
		r, ok := cmds[argv[1]]
		if !ok {
			return nil, errors.New("unexpected command " + strings.Join(argv, " "))
		}
		return []byte(r.out), r.err
	}
}

type nbdReply struct {
	out string
	err error
}

func TestNBDMap(t *testing.T) {
	conn := " -c " + testConf + " --id csi --keyring /run/basalt/keyring"
	cases := []struct {
		name     string
		readOnly bool
		cookie   string
		list     string
		mapR     nbdReply
		want     Mapping
		wantErr  []string
		calls    []string
	}{
		{
			name:   "fresh map with cookie",
			cookie: "pvc-1234",
			list:   "[]",
			mapR:   nbdReply{out: "/dev/nbd3\n"},
			want:   Mapping{Mapper: "nbd", Device: "/dev/nbd3"},
			calls:  []string{nbdListCmd, "rbd-nbd map --cookie pvc-1234 kube/vol1" + conn},
		},
		{
			name:     "read-only without cookie",
			readOnly: true,
			list:     "[]",
			mapR:     nbdReply{out: "/dev/nbd0\n"},
			want:     Mapping{Mapper: "nbd", Device: "/dev/nbd0"},
			calls:    []string{nbdListCmd, "rbd-nbd map --read-only kube/vol1" + conn},
		},
		{
			name:     "read-only with cookie",
			readOnly: true,
			cookie:   "ck",
			list:     "[]",
			mapR:     nbdReply{out: "/dev/nbd5\n"},
			want:     Mapping{Mapper: "nbd", Device: "/dev/nbd5"},
			calls:    []string{nbdListCmd, "rbd-nbd map --read-only --cookie ck kube/vol1" + conn},
		},
		{
			name:  "reuse existing mapping (not the snapshot)",
			list:  nbdListJSON,
			want:  Mapping{Mapper: "nbd", Device: "/dev/nbd2"},
			calls: []string{nbdListCmd},
		},
		{
			name:  "device among log lines",
			list:  nbdListJSON[:strings.Index(nbdListJSON, `{"id":4103`)-1] + "]",
			mapR:  nbdReply{out: "2026-01-01T00:00:00.000+0000 7f00 -1 auth: something\n/dev/nbd11\n"},
			want:  Mapping{Mapper: "nbd", Device: "/dev/nbd11"},
			calls: []string{nbdListCmd, "rbd-nbd map kube/vol1" + conn},
		},
		{
			name:    "map fails",
			list:    "[]",
			mapR:    nbdReply{out: "rbd-nbd: failed to load nbd kernel module: (1) Operation not permitted\n", err: errors.New("exit status 1")},
			wantErr: []string{"rbd-nbd map kube/vol1", "exit status 1", "failed to load nbd kernel module: (1) Operation not permitted"},
			calls:   []string{nbdListCmd, "rbd-nbd map kube/vol1" + conn},
		},
		{
			name:    "bad list output",
			list:    "garbage",
			wantErr: []string{"rbd-nbd list-mapped", "garbage"},
			calls:   []string{nbdListCmd},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := &cliRecorder{reply: nbdReplies([]string{c.list}, map[string]nbdReply{"map": c.mapR})}
			got, err := NewNBD(r).Map(context.Background(), Spec{Pool: "kube", Image: "vol1", CephConf: testConf,
				User: "csi", Keyring: "/run/basalt/keyring", ReadOnly: c.readOnly, Cookie: c.cookie})
			cliErrHas(t, err, c.wantErr)
			if got != c.want {
				t.Errorf("Map = %+v, want %+v", got, c.want)
			}
			if !reflect.DeepEqual(r.calls, c.calls) {
				t.Errorf("commands:\n  %q\nwant\n  %q", r.calls, c.calls)
			}
		})
	}
}

func TestNBDCheck(t *testing.T) {
	cases := []struct {
		name, list, device string
		wantErr            []string
	}{
		{name: "alive", list: nbdListJSON, device: "/dev/nbd2"},
		{name: "process died", list: `[{"id":4101,"pool":"kube","namespace":"","image":"other","snap":"","device":"/dev/nbd0","cookie":""}]`, device: "/dev/nbd2",
			wantErr: []string{"nbd mapping of kube/vol1 on /dev/nbd2 is gone", "Reattach"}},
		{name: "device serves another image", list: nbdListJSON, device: "/dev/nbd0", wantErr: []string{"is gone", "now serves kube/other"}},
		{name: "no pid", list: `[{"id":0,"pool":"kube","namespace":"","image":"vol1","snap":"","device":"/dev/nbd2"}]`, device: "/dev/nbd2", wantErr: []string{"is gone"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := &cliRecorder{reply: nbdReplies([]string{c.list}, nil)}
			err := NewNBD(r).Check(context.Background(), Spec{Pool: "kube", Image: "vol1", User: "csi"}, Mapping{Mapper: "nbd", Device: c.device})
			cliErrHas(t, err, c.wantErr)
			if want := []string{nbdListCmd}; !reflect.DeepEqual(r.calls, want) {
				t.Errorf("commands %q, want %q", r.calls, want)
			}
		})
	}
}

func TestNBDReattach(t *testing.T) {
	conn := " -c " + testConf + " --id csi --keyring /run/basalt/keyring"
	cases := []struct {
		name     string
		cookie   string
		readOnly bool
		list     string
		attach   nbdReply
		wantErr  []string
		calls    []string
	}{
		{name: "still alive", cookie: "c-vol1", list: nbdListJSON, calls: []string{nbdListCmd}},
		{
			name:   "process died",
			cookie: "c-vol1",
			list:   "[]",
			attach: nbdReply{out: "/dev/nbd2\n"},
			calls:  []string{nbdListCmd, "rbd-nbd attach --device /dev/nbd2 --cookie c-vol1 kube/vol1" + conn},
		},
		{
			name:     "read-only, no cookie",
			readOnly: true,
			list:     "[]",
			attach:   nbdReply{out: "/dev/nbd2\n"},
			calls:    []string{nbdListCmd, "rbd-nbd attach --device /dev/nbd2 --read-only kube/vol1" + conn},
		},
		{
			name:    "kernel without cookie support",
			cookie:  "c-vol1",
			list:    "[]",
			attach:  nbdReply{out: "rbd-nbd: kernel does not have cookie support\n", err: errors.New("exit status 22")},
			wantErr: []string{"Linux < 5.14", "kernel does not have cookie support"},
			calls:   []string{nbdListCmd, "rbd-nbd attach --device /dev/nbd2 --cookie c-vol1 kube/vol1" + conn},
		},
		{
			name:    "cookie mismatch",
			cookie:  "c-vol1",
			list:    "[]",
			attach:  nbdReply{out: "rbd-nbd: cookie mismatch\n", err: errors.New("exit status 22")},
			wantErr: []string{"another cookie", "rbd-nbd: cookie mismatch"},
			calls:   []string{nbdListCmd, "rbd-nbd attach --device /dev/nbd2 --cookie c-vol1 kube/vol1" + conn},
		},
		{
			name:    "device taken by another image",
			cookie:  "c-vol1",
			list:    `[{"id":77,"pool":"kube","namespace":"","image":"other","snap":"","device":"/dev/nbd2","cookie":"x"}]`,
			wantErr: []string{"now serves kube/other"},
			calls:   []string{nbdListCmd},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := &cliRecorder{reply: nbdReplies([]string{c.list}, map[string]nbdReply{"attach": c.attach})}
			err := NewNBD(r).Reattach(context.Background(), Spec{Pool: "kube", Image: "vol1", CephConf: testConf,
				User: "csi", Keyring: "/run/basalt/keyring", ReadOnly: c.readOnly, Cookie: c.cookie},
				Mapping{Mapper: "nbd", Device: "/dev/nbd2"})
			cliErrHas(t, err, c.wantErr)
			if !reflect.DeepEqual(r.calls, c.calls) {
				t.Errorf("commands:\n  %q\nwant\n  %q", r.calls, c.calls)
			}
		})
	}
}

func TestNBDUnmap(t *testing.T) {
	unmapCmd := "rbd-nbd unmap /dev/nbd2"
	cases := []struct {
		name    string
		cookie  string
		backend string // /sys/block/nbd2/backend; "" for none
		lists   []string
		unmap   nbdReply
		wantErr []string
		calls   []string
	}{
		{name: "mapped", lists: []string{nbdListJSON}, calls: []string{nbdListCmd, unmapCmd}},
		{name: "already unmapped", cookie: "c-vol1", lists: []string{"[]"}, calls: []string{nbdListCmd}},
		{name: "not listed, no cookie", lists: []string{"[]"}, backend: "c-vol1", calls: []string{nbdListCmd}},
		{name: "process died, kernel still holds our cookie", cookie: "c-vol1", backend: "c-vol1\n", lists: []string{"[]"}, calls: []string{nbdListCmd, unmapCmd}},
		{name: "process died, device has another cookie", cookie: "c-vol1", backend: "c-else\n", lists: []string{"[]"}, calls: []string{nbdListCmd}},
		{
			name:   "device serves another image",
			cookie: "c-vol1", backend: "c-vol1",
			lists: []string{`[{"id":77,"pool":"kube","namespace":"","image":"other","snap":"","device":"/dev/nbd2","cookie":"x"}]`},
			calls: []string{nbdListCmd},
		},
		{
			name:  "unmap fails but the device went away",
			lists: []string{nbdListJSON, "[]"},
			unmap: nbdReply{out: "rbd-nbd: failed to open device: /dev/nbd2\n", err: errors.New("exit status 22")},
			calls: []string{nbdListCmd, unmapCmd, nbdListCmd},
		},
		{
			name:    "unmap fails",
			lists:   []string{nbdListJSON},
			unmap:   nbdReply{out: "rbd-nbd: waiting for process exit timed out\n", err: errors.New("exit status 22")},
			wantErr: []string{"/dev/nbd2", "waiting for process exit timed out"},
			calls:   []string{nbdListCmd, unmapCmd, nbdListCmd},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sys := t.TempDir()
			if c.backend != "" {
				if err := os.MkdirAll(filepath.Join(sys, "nbd2"), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(sys, "nbd2", "backend"), []byte(c.backend), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			r := &cliRecorder{reply: nbdReplies(c.lists, map[string]nbdReply{"unmap": c.unmap})}
			n := NewNBD(r)
			n.SysBlock = sys
			err := n.Unmap(context.Background(), Spec{Pool: "kube", Image: "vol1", CephConf: testConf, User: "csi",
				Keyring: "/run/basalt/keyring", Cookie: c.cookie}, Mapping{Mapper: "nbd", Device: "/dev/nbd2"})
			cliErrHas(t, err, c.wantErr)
			if !reflect.DeepEqual(r.calls, c.calls) {
				t.Errorf("commands:\n  %q\nwant\n  %q", r.calls, c.calls)
			}
		})
	}
}

func TestNBDName(t *testing.T) {
	var m Mapper = NewNBD(nil)
	if m.Name() != "nbd" {
		t.Errorf("Name = %q", m.Name())
	}
	m = NewKRBD(nil, "")
	if m.Name() != "krbd" {
		t.Errorf("Name = %q", m.Name())
	}
	if NewNBD(nil).SysBlock != "/sys/block" {
		t.Error("SysBlock default")
	}
}

// A map interrupted before it named its device is reverted by unmapping the
// rbd-nbd device that serves the image.
func TestNBDUnmapUnknownDevice(t *testing.T) {
	r := &cliRecorder{reply: nbdReplies([]string{nbdListJSON}, map[string]nbdReply{"unmap": {}})}
	n := NewNBD(r)
	n.SysBlock = t.TempDir()
	err := n.Unmap(context.Background(), Spec{Pool: "kube", Image: "vol1", CephConf: testConf}, Mapping{Mapper: "nbd"})
	want := []string{nbdListCmd, nbdListCmd, "rbd-nbd unmap /dev/nbd2"}
	if err != nil || !reflect.DeepEqual(r.calls, want) {
		t.Fatalf("err %v, commands:\n  %q\nwant\n  %q", err, r.calls, want)
	}
}
