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
