package mapper

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
)

// cliRecorder is a fake Runner: it records every command line and answers
// with reply (nil reply: empty output, no error).
type cliRecorder struct {
	mu    sync.Mutex
	calls []string
	argv  [][]string
	reply func(argv []string) ([]byte, error)
}

func (c *cliRecorder) Run(_ context.Context, name string, args ...string) ([]byte, error) {
	argv := append([]string{name}, args...)
	c.mu.Lock()
	c.calls = append(c.calls, strings.Join(argv, " "))
	c.argv = append(c.argv, argv)
	c.mu.Unlock()
	if c.reply == nil {
		return nil, nil
	}
	return c.reply(argv)
}

// cliFlag returns the argument following flag in argv ("" if none).
func cliFlag(argv []string, flag string) string {
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] == flag {
			return argv[i+1]
		}
	}
	return ""
}

const (
	testCSIKey   = "AQBcsiKeyOnlyForTests0123456789abcdefXY=="
	testAdminKey = "AQDadminKeyForTests9876543210zyxwvutsr=="
	testConf     = "/etc/basalt/ceph.conf"
)

func writeTestKeyring(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "keyring")
	content := "# generated\n[client.admin]\n\tkey = " + testAdminKey + "\n\tcaps mon = \"allow *\"\n\tcaps osd = \"allow *\"\n\n" +
		"[client.csi]\n\tkey = " + testCSIKey + "\n\tcaps mon = \"profile rbd\"\n\tcaps osd = \"profile rbd pool=kube\"\n"
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// krbdListJSON is shaped like Pacific's `rbd device list --format json`.
const krbdListJSON = `[{"id":"0","pool":"kube","namespace":"","name":"other","snap":"-","device":"/dev/rbd0"},` +
	`{"id":"1","pool":"kube","namespace":"","name":"vol1","snap":"snap1","device":"/dev/rbd1"},` +
	`{"id":"2","pool":"kube","namespace":"ns","name":"vol1","snap":"-","device":"/dev/rbd2"},` +
	`{"id":"3","pool":"kube","namespace":"","name":"vol1","snap":"-","device":"/dev/rbd3"}]` + "\n"

const krbdListCmd = "rbd device list --device-type krbd --format json -c " + testConf

func TestKRBDMap(t *testing.T) {
	type tc struct {
		name     string
		user     string
		readOnly bool
		list     string
		mapOut   string
		mapErr   error
		want     Mapping
		wantErr  []string // substrings of the error
		calls    []string // with KEYFILE for the key file path
	}
	mapCmd := "rbd device map --device-type krbd kube/vol1 -c " + testConf + " --id csi --keyfile KEYFILE"
	cases := []tc{
		{
			name:   "fresh map",
			user:   "csi",
			list:   "[]",
			mapOut: "/dev/rbd4\n",
			want:   Mapping{Mapper: "krbd", Device: "/dev/rbd4"},
			calls:  []string{krbdListCmd, mapCmd},
		},
		{
			name:     "read-only",
			user:     "csi",
			readOnly: true,
			list:     "[]\n",
			mapOut:   "/dev/rbd0\n",
			want:     Mapping{Mapper: "krbd", Device: "/dev/rbd0"},
			calls:    []string{krbdListCmd, "rbd device map --device-type krbd --read-only kube/vol1 -c " + testConf + " --id csi --keyfile KEYFILE"},
		},
		{
			name:  "reuse existing mapping, skipping snapshots, namespaces and other images",
			user:  "csi",
			list:  krbdListJSON,
			want:  Mapping{Mapper: "krbd", Device: "/dev/rbd3"},
			calls: []string{krbdListCmd},
		},
		{
			name:  "reuse with log noise around the JSON",
			user:  "csi",
			list:  "2026-01-01T00:00:00.000+0000 7f00 -1 Errors while parsing config file!\n" + krbdListJSON + "did not load config file, using default settings.\n",
			want:  Mapping{Mapper: "krbd", Device: "/dev/rbd3"},
			calls: []string{krbdListCmd},
		},
		{
			name:   "device among log lines",
			user:   "csi",
			list:   krbdListJSON[:strings.Index(krbdListJSON, `{"id":"3"`)-1] + "]",
			mapOut: "did not load config file, using default settings.\nrbd: warning: something\n/dev/rbd12\n",
			want:   Mapping{Mapper: "krbd", Device: "/dev/rbd12"},
			calls:  []string{krbdListCmd, mapCmd},
		},
		{
			name:    "map fails",
			user:    "csi",
			list:    "[]",
			mapOut:  "rbd: sysfs write failed\nrbd: map failed: (1) Operation not permitted\n",
			mapErr:  errors.New("exit status 1"),
			wantErr: []string{"kube/vol1", "exit status 1", "rbd: map failed: (1) Operation not permitted"},
			calls:   []string{krbdListCmd, mapCmd},
		},
		{
			name:    "map prints no device",
			user:    "csi",
			list:    "[]",
			mapOut:  "rbd: something odd\n",
			wantErr: []string{"no /dev/rbdN device", "rbd: something odd"},
			calls:   []string{krbdListCmd, mapCmd},
		},
		{
			name:    "keyring has no section for the user",
			user:    "nobody",
			list:    "[]",
			wantErr: []string{"has no section [client.nobody]"},
			calls:   []string{krbdListCmd},
		},
		{
			name:    "list fails",
			user:    "csi",
			list:    "rbd: udev enumerate failed\n",
			mapErr:  errors.New("exit status 2"),
			wantErr: []string{"listing krbd devices", "udev enumerate failed"},
			calls:   []string{krbdListCmd},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			keyring := writeTestKeyring(t)
			keyDir := t.TempDir()
			var keyFile string
			var runErrs []string
			r := &cliRecorder{}
			r.reply = func(argv []string) ([]byte, error) {
				switch strings.Join(argv[:3], " ") {
				case "rbd device list":
					if c.name == "list fails" {
						return []byte(c.list), c.mapErr
					}
					return []byte(c.list), nil
				case "rbd device map":
					keyFile = cliFlag(argv, "--keyfile")
					// While the command runs: the key file holds the key alone, mode 0600, in keyDir.
					if filepath.Dir(keyFile) != keyDir {
						runErrs = append(runErrs, "key file "+keyFile+" not in "+keyDir)
					}
					st, err := os.Stat(keyFile)
					if err != nil {
						runErrs = append(runErrs, "key file missing during map: "+err.Error())
					} else if st.Mode().Perm() != 0o600 {
						runErrs = append(runErrs, "key file mode "+st.Mode().Perm().String())
					}
					if b, _ := os.ReadFile(keyFile); string(b) != testCSIKey {
						runErrs = append(runErrs, "key file holds "+string(b))
					}
					return []byte(c.mapOut), c.mapErr
				}
				return nil, errors.New("unexpected command")
			}
			k := NewKRBD(r, keyDir)
			got, err := k.Map(context.Background(), Spec{Pool: "kube", Image: "vol1", CephConf: testConf, User: c.user, Keyring: keyring, ReadOnly: c.readOnly})
			for _, e := range runErrs {
				t.Error(e)
			}
			if c.wantErr != nil {
				if err == nil {
					t.Fatalf("Map = %+v, want error", got)
				}
				for _, w := range c.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
			} else if err != nil {
				t.Fatalf("Map: %v", err)
			} else if got != c.want {
				t.Errorf("Map = %+v, want %+v", got, c.want)
			}
			calls := make([]string, len(r.calls))
			for i, call := range r.calls {
				if keyFile != "" {
					call = strings.ReplaceAll(call, keyFile, "KEYFILE")
				}
				calls[i] = call
			}
			if !reflect.DeepEqual(calls, c.calls) {
				t.Errorf("commands:\n  %q\nwant\n  %q", calls, c.calls)
			}
			for _, argv := range r.argv {
				for _, a := range argv {
					if strings.Contains(a, testCSIKey) || strings.Contains(a, testAdminKey) || strings.Contains(a, "AQ") {
						t.Errorf("key on the command line: %q", argv)
					}
					if a == "--keyring" {
						t.Errorf("--keyring passed to krbd: %q", argv)
					}
				}
			}
			if keyFile != "" {
				if _, err := os.Stat(keyFile); !os.IsNotExist(err) {
					t.Errorf("key file %s left behind (stat: %v)", keyFile, err)
				}
			}
			if left, _ := os.ReadDir(keyDir); len(left) != 0 {
				t.Errorf("key dir not empty: %v", left)
			}
		})
	}
}

func TestKRBDUnmap(t *testing.T) {
	unmapCmd := "rbd device unmap --device-type krbd /dev/rbd3 -c " + testConf
	cases := []struct {
		name     string
		list     string
		unmapOut string
		unmapErr error
		wantErr  []string
		calls    []string
	}{
		{name: "mapped", list: krbdListJSON, calls: []string{krbdListCmd, unmapCmd}},
		{name: "already unmapped", list: "[]", calls: []string{krbdListCmd}},
		{
			name:  "device now carries another image",
			list:  `[{"id":"3","pool":"kube","namespace":"","name":"other","snap":"-","device":"/dev/rbd3"}]`,
			calls: []string{krbdListCmd},
		},
		{
			name:     "device vanished during unmap",
			list:     krbdListJSON,
			unmapOut: "rbd: '/dev/rbd3' is not a block device\nrbd: unmap failed: (22) Invalid argument\n",
			unmapErr: errors.New("exit status 22"),
			calls:    []string{krbdListCmd, unmapCmd},
		},
		{
			name:     "busy",
			list:     krbdListJSON,
			unmapOut: "rbd: sysfs write failed\nrbd: unmap failed: (16) Device or resource busy\n",
			unmapErr: errors.New("exit status 16"),
			wantErr:  []string{"/dev/rbd3", "(16) Device or resource busy"},
			calls:    []string{krbdListCmd, unmapCmd},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := &cliRecorder{reply: func(argv []string) ([]byte, error) {
				if argv[2] == "list" {
					return []byte(c.list), nil
				}
				return []byte(c.unmapOut), c.unmapErr
			}}
			err := NewKRBD(r, t.TempDir()).Unmap(context.Background(),
				Spec{Pool: "kube", Image: "vol1", CephConf: testConf, User: "csi", Keyring: "/k"},
				Mapping{Mapper: "krbd", Device: "/dev/rbd3"})
			cliErrHas(t, err, c.wantErr)
			if !reflect.DeepEqual(r.calls, c.calls) {
				t.Errorf("commands:\n  %q\nwant\n  %q", r.calls, c.calls)
			}
		})
	}
}

func TestKRBDCheck(t *testing.T) {
	cases := []struct {
		name    string
		list    string
		device  string
		wantErr []string
	}{
		{name: "alive", list: krbdListJSON, device: "/dev/rbd3"},
		{name: "gone", list: "[]", device: "/dev/rbd3", wantErr: []string{"krbd mapping of kube/vol1 on /dev/rbd3 is gone"}},
		{name: "device reused by another image", list: krbdListJSON, device: "/dev/rbd0", wantErr: []string{"is gone", "mapped on /dev/rbd3 instead"}},
		{name: "snapshot on the device", list: krbdListJSON, device: "/dev/rbd1", wantErr: []string{"is gone"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := &cliRecorder{reply: func([]string) ([]byte, error) { return []byte(c.list), nil }}
			err := NewKRBD(r, "").Check(context.Background(),
				Spec{Pool: "kube", Image: "vol1", CephConf: testConf, User: "csi"},
				Mapping{Mapper: "krbd", Device: c.device})
			cliErrHas(t, err, c.wantErr)
			if want := []string{krbdListCmd}; !reflect.DeepEqual(r.calls, want) {
				t.Errorf("commands %q, want %q", r.calls, want)
			}
		})
	}
}

func TestKeyringParsing(t *testing.T) {
	cases := []struct {
		name, content, user, want string
		wantErr                   []string
	}{
		{name: "second section", content: "[client.admin]\n\tkey = A1==\n[client.csi]\n\tkey = C1==\n\tcaps mon = \"profile rbd\"\n", user: "csi", want: "C1=="},
		{name: "no spaces, quoted", content: "[client.csi]\nkey=\"C2==\"\n", user: "csi", want: "C2=="},
		{name: "comments and caps first", content: "; x\n[client.csi]\n# key = WRONG\ncaps osd = \"allow\"\n  key   =   C3==  \n", user: "csi", want: "C3=="},
		{name: "prefix user does not match", content: "[client.csi2]\nkey = X==\n", user: "csi", wantErr: []string{"no section [client.csi]"}},
		{name: "section without key", content: "[client.csi]\ncaps mon = \"allow r\"\n", user: "csi", wantErr: []string{"section [client.csi] has no key"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "keyring")
			if err := os.WriteFile(p, []byte(c.content), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := rbdCLIKey(p, c.user)
			cliErrHas(t, err, c.wantErr)
			if got != c.want {
				t.Errorf("key = %q, want %q", got, c.want)
			}
			if err != nil && strings.Contains(err.Error(), "X==") {
				t.Errorf("error leaks a key: %v", err)
			}
		})
	}
	if _, err := rbdCLIKey(filepath.Join(t.TempDir(), "missing"), "csi"); err == nil {
		t.Error("missing keyring: no error")
	}
}

func cliErrHas(t *testing.T, err error, want []string) {
	t.Helper()
	if want == nil {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("no error, want one containing %q", want)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
}

// A map interrupted before it named its device (killed, timed out) is
// reverted by unmapping whatever maps the image, not by doing nothing.
func TestKRBDUnmapUnknownDevice(t *testing.T) {
	r := &cliRecorder{reply: func(argv []string) ([]byte, error) {
		if argv[2] == "list" {
			return []byte(krbdListJSON), nil
		}
		return nil, nil
	}}
	err := NewKRBD(r, t.TempDir()).Unmap(context.Background(),
		Spec{Pool: "kube", Image: "vol1", CephConf: testConf, User: "csi", Keyring: "/k"}, Mapping{Mapper: "krbd"})
	want := []string{krbdListCmd, krbdListCmd, "rbd device unmap --device-type krbd /dev/rbd3 -c " + testConf}
	if err != nil || !reflect.DeepEqual(r.calls, want) {
		t.Fatalf("err %v, commands:\n  %q\nwant\n  %q", err, r.calls, want)
	}
	// Devices of other images (and snapshots, namespaces) are left alone.
	r.calls = nil
	if err := NewKRBD(r, t.TempDir()).Unmap(context.Background(), Spec{Pool: "kube", Image: "vol9", CephConf: testConf}, Mapping{Mapper: "krbd"}); err != nil || len(r.calls) != 1 {
		t.Fatalf("unmapped another image's device: %v %q", err, r.calls)
	}
}

// Only a Check that saw the mapping dead says ErrGone; one that could not
// look (the listing failed) must not make the node re-map live volumes.
func TestKRBDCheckGoneOnlyWhenSeen(t *testing.T) {
	spec := Spec{Pool: "kube", Image: "vol1", CephConf: testConf}
	failing := &cliRecorder{reply: func([]string) ([]byte, error) { return []byte("timed out"), errors.New("exit status 110") }}
	if err := NewKRBD(failing, t.TempDir()).Check(context.Background(), spec, Mapping{Device: "/dev/rbd3"}); err == nil || errors.Is(err, ErrGone) {
		t.Fatalf("a failed listing: %v (must be an error, not ErrGone)", err)
	}
	empty := &cliRecorder{reply: func([]string) ([]byte, error) { return []byte("[]"), nil }}
	if err := NewKRBD(empty, t.TempDir()).Check(context.Background(), spec, Mapping{Device: "/dev/rbd3"}); !errors.Is(err, ErrGone) {
		t.Fatalf("a mapping that is not listed: %v, want ErrGone", err)
	}
}

// List keeps image heads (a mapped snapshot is not a volume's mapping) for
// both device-listing mappers.
func TestListKeepsImageHeads(t *testing.T) {
	krbd := &cliRecorder{reply: func([]string) ([]byte, error) {
		return []byte(`[{"id":"0","pool":"volumes","namespace":"","name":"basalt-a","snap":"-","device":"/dev/rbd0"},
{"id":"1","pool":"volumes","namespace":"","name":"basalt-a","snap":"s1","device":"/dev/rbd1"}]`), nil
	}}
	got, err := NewKRBD(krbd, t.TempDir()).List(context.Background())
	want := []Mapped{{Spec{Pool: "volumes", Image: "basalt-a"}, Mapping{Mapper: "krbd", Device: "/dev/rbd0"}}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("krbd List = %v, %v; want %v", got, err, want)
	}
	nbd := &cliRecorder{reply: func([]string) ([]byte, error) {
		return []byte(`[{"id":42,"pool":"volumes","namespace":"","image":"basalt-b","snap":"","device":"/dev/nbd0"},
{"id":43,"pool":"volumes","namespace":"ns","image":"basalt-c","snap":"","device":"/dev/nbd1"}]`), nil
	}}
	got, err = NewNBD(nbd).List(context.Background())
	want = []Mapped{{Spec{Pool: "volumes", Image: "basalt-b"}, Mapping{Mapper: "nbd", Device: "/dev/nbd0"}}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("nbd List = %v, %v; want %v", got, err, want)
	}
}
