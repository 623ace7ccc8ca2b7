package access

import (
	"errors"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

const (
	snw = "SINGLE_NODE_WRITER"
	sro = "SINGLE_NODE_READER_ONLY"
	mro = "MULTI_NODE_READER_ONLY"
	msw = "MULTI_NODE_SINGLE_WRITER"
	mmw = "MULTI_NODE_MULTI_WRITER"
)

func at(node, mode, am string) Attachment { return Attachment{Node: node, Mode: mode, AccessMode: am} }

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name     string
		existing []Attachment
		want     Attachment
		conflict string // node named, "" = allowed
	}{
		{"first publish", nil, at("a", RW, snw), ""},
		{"same node again", []Attachment{at("a", RW, snw)}, at("a", RW, snw), ""},
		{"single writer elsewhere", []Attachment{at("a", RW, snw)}, at("b", RW, snw), "a"},
		{"single reader elsewhere", []Attachment{at("a", RO, sro)}, at("b", RO, sro), "a"},
		{"single-node wanted next to a reader", []Attachment{at("a", RO, mro)}, at("b", RO, sro), "a"},
		{"readers everywhere", []Attachment{at("a", RO, mro), at("b", RO, mro)}, at("c", RO, mro), ""},
		{"one writer plus readers", []Attachment{at("a", RW, msw), at("b", RO, msw)}, at("c", RO, msw), ""},
		{"second writer refused", []Attachment{at("b", RO, msw), at("a", RW, msw)}, at("c", RW, msw), "a"},
		{"multi writers", []Attachment{at("a", RW, mmw), at("b", RW, mmw)}, at("c", RW, mmw), ""},
		{"multi writer next to single writer", []Attachment{at("a", RW, msw)}, at("b", RW, mmw), "a"},
		{"reader next to a multi writer", []Attachment{at("a", RW, mmw)}, at("b", RO, mro), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Check(tc.existing, tc.want)
			var ce *ConflictError
			switch {
			case tc.conflict == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.conflict != "" && (!errors.As(err, &ce) || ce.Node != tc.conflict):
				t.Fatalf("got %v, want a conflict naming %s", err, tc.conflict)
			}
		})
	}
}

func TestModeFor(t *testing.T) {
	for am, want := range map[csi.VolumeCapability_AccessMode_Mode]string{
		csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER:       RW,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY:  RO,
		csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY:   RO,
		csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER: RW,
		csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER:  RW,
	} {
		if got := ModeFor(am, false); got != want {
			t.Errorf("%v: %s, want %s", am, got, want)
		}
		if got := ModeFor(am, true); got != RO {
			t.Errorf("%v readonly: %s", am, got)
		}
	}
}
