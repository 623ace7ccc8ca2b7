package volumeid

import (
	"errors"
	"strings"
	"testing"
)

const fsid = "5f0e7c2a-1b3d-4e5f-8a9b-0c1d2e3f4a5b"

func TestRoundTrip(t *testing.T) {
	id, err := New(fsid, 7)
	if err != nil {
		t.Fatal(err)
	}
	s := id.String()
	if len(s) > 128 {
		t.Fatalf("id too long: %d", len(s))
	}
	got, err := Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	if got != id {
		t.Fatalf("got %+v want %+v", got, id)
	}
	if got.FSID != "5f0e7c2a1b3d4e5f8a9b0c1d2e3f4a5b" || !strings.HasPrefix(got.ImageName(), "basalt-") {
		t.Fatalf("unexpected %+v %s", got, got.ImageName())
	}
	other, _ := New(fsid, 7)
	if other.UUID == id.UUID {
		t.Fatal("two IDs share a UUID")
	}
}

func TestParseRejects(t *testing.T) {
	good, _ := New(fsid, 3)
	for _, s := range []string{
		"", "bsl1", "bsl2" + good.String()[4:], good.String() + ".x", strings.ToUpper(good.String()),
		"bsl1.5f0e7c2a1b3d4e5f8a9b0c1d2e3f4a5.3." + good.UUID,
		"bsl1." + good.FSID + ".-1." + good.UUID,
		"bsl1." + good.FSID + ".03." + good.UUID,
		"bsl1." + good.FSID + ".3." + good.UUID[:31] + "g",
		"../../etc/passwd",
	} {
		if _, err := Parse(s); !errors.Is(err, ErrNotBasalt) {
			t.Errorf("Parse(%q) = %v, want ErrNotBasalt", s, err)
		}
	}
	if _, err := New("not-a-fsid", 1); err == nil {
		t.Error("New accepted a bad fsid")
	}
}

func FuzzParse(f *testing.F) {
	id, _ := New(fsid, 42)
	f.Add(id.String())
	f.Add("bsl1...")
	f.Fuzz(func(t *testing.T, s string) {
		got, err := Parse(s)
		if err != nil {
			return
		}
		if got.String() != s {
			t.Fatalf("Parse(%q) re-encodes as %q", s, got.String())
		}
	})
}
