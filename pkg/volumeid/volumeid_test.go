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

func TestSnapshotIDRoundTrip(t *testing.T) {
	v := ID{FSID: strings.Repeat("ab", 16), PoolID: 12345, UUID: strings.Repeat("0f", 16)}
	s := SnapshotID{Volume: v, UUID: strings.Repeat("9c", 16)}
	enc := s.String()
	if len(enc) > 128 {
		t.Fatalf("snapshot ID is %d bytes, over CSI's 128", len(enc))
	}
	got, err := ParseSnapshot(enc)
	if err != nil || got != s {
		t.Fatalf("ParseSnapshot(%q) = %+v, %v", enc, got, err)
	}
	if !strings.HasPrefix(enc, SnapshotPrefixOf(v)) {
		t.Fatalf("%q does not start with its volume's prefix %q", enc, SnapshotPrefixOf(v))
	}
	for _, bad := range []string{"", "bss1", "bss1.", v.String(), enc + "0", strings.Replace(enc, "bss1", "bsl1", 1),
		enc[:len(enc)-33], "bss1..0.." + strings.Repeat("0", 32), strings.ToUpper(enc)} {
		if _, err := ParseSnapshot(bad); !errors.Is(err, ErrNotBasalt) {
			t.Errorf("ParseSnapshot(%q) = %v, want ErrNotBasalt", bad, err)
		}
	}
	if _, err := Parse(enc); err == nil {
		t.Errorf("a snapshot ID parsed as a volume ID")
	}
}

func TestGroupSnapshotIDRoundTrip(t *testing.T) {
	g := GroupSnapshotID{FSID: strings.Repeat("ab", 16), PoolID: 3, UUID: strings.Repeat("12", 16)}
	got, err := ParseGroupSnapshot(g.String())
	if err != nil || got != g {
		t.Fatalf("ParseGroupSnapshot(%q) = %+v, %v", g.String(), got, err)
	}
	vol := ID(g)
	for _, bad := range []string{"", "bsg1", vol.String(), SnapshotID{Volume: vol, UUID: g.UUID}.String(), g.String() + "0"} {
		if _, err := ParseGroupSnapshot(bad); !errors.Is(err, ErrNotBasalt) {
			t.Errorf("ParseGroupSnapshot(%q) = %v, want ErrNotBasalt", bad, err)
		}
	}
}
