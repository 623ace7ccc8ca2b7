package node

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/basalt-csi/basalt/pkg/node/mapper"
)

func TestStoreRoundTrip(t *testing.T) {
	s := &Store{Dir: filepath.Join(t.TempDir(), "volumes")}
	if r, err := s.Load("abc"); r != nil || err != nil {
		t.Fatalf("empty store: %v %v", r, err)
	}
	if all, err := s.All(); len(all) != 0 || err != nil {
		t.Fatalf("empty store lists %v %v", all, err)
	}
	rec := &Record{
		VolumeID: "bsl1.x", StagingPath: "/stage", FsType: "ext4", ReadOnly: true,
		Spec:    mapper.Spec{Pool: "p", Image: "i", CephConf: "/c", User: "u", Keyring: "/k"},
		Mapping: mapper.Mapping{Mapper: "fuse", Device: "/dev/loop3", Dir: "/d"},
		Targets: []Target{{Path: "/t1"}, {Path: "/t2", ReadOnly: true}},
	}
	if err := s.Save("abc", rec); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load("abc")
	if err != nil || !reflect.DeepEqual(got, rec) {
		t.Fatalf("loaded %+v, %v; saved %+v", got, err, rec)
	}
	if got.target("/t2") != 1 || got.target("/nope") != -1 {
		t.Fatal("target lookup")
	}
	if st, _ := os.Stat(filepath.Join(s.Dir, "abc.json")); st.Mode().Perm() != 0o600 {
		t.Fatalf("record mode %v", st.Mode().Perm())
	}
	if _, err := os.Stat(filepath.Join(s.Dir, "abc.json.tmp")); !os.IsNotExist(err) {
		t.Fatal("temporary file left behind")
	}
	if err := os.WriteFile(filepath.Join(s.Dir, "notes.txt"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	all, err := s.All()
	if err != nil || len(all) != 1 || all["abc"] == nil {
		t.Fatalf("All = %v, %v", all, err)
	}
	if err := s.Delete("abc"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("abc"); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	if err := os.WriteFile(filepath.Join(s.Dir, "bad.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load("bad"); err == nil {
		t.Fatal("a corrupt record loaded")
	}
}

func TestSameHost(t *testing.T) {
	watchers := []string{"10.0.0.5:0/1234", "10.0.0.6:0/99", "[fd00::5]:0/7", "10.0.0.5:0/555"}
	got := SameHost(watchers, "[v2:10.0.0.5:0/42,v1:10.0.0.5:0/42]")
	if len(got) != 2 || got[0] != "10.0.0.5:0/1234" || got[1] != "10.0.0.5:0/555" {
		t.Errorf("SameHost = %v", got)
	}
	if got := SameHost(watchers, "[fd00::5]:0/1"); len(got) != 1 || got[0] != "[fd00::5]:0/7" {
		t.Errorf("SameHost v6 = %v", got)
	}
	if got := SameHost(watchers, ""); len(got) != 0 {
		t.Errorf("SameHost without an own address = %v", got)
	}
}
