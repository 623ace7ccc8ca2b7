package records

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"
)

// omapStore keeps omap indexes in memory; only what the index helpers use.
type omapStore struct {
	Store // nil: the object calls are not used here
	omap  map[string]map[string][]byte
}

func (s *omapStore) IndexSet(_ context.Context, oid string, kv map[string][]byte) error {
	if s.omap[oid] == nil {
		s.omap[oid] = map[string][]byte{}
	}
	for k, v := range kv {
		s.omap[oid][k] = v
	}
	return nil
}

func (s *omapStore) IndexGet(_ context.Context, oid string, keys ...string) (map[string][]byte, error) {
	out := map[string][]byte{}
	for _, k := range keys {
		if v, ok := s.omap[oid][k]; ok {
			out[k] = v
		}
	}
	return out, nil
}

func (s *omapStore) IndexList(_ context.Context, oid, startAfter, prefix string, max int) ([]KV, error) {
	var out []KV
	for k, v := range s.omap[oid] {
		if k > startAfter && strings.HasPrefix(k, prefix) {
			out = append(out, KV{k, v})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	if len(out) > max {
		out = out[:max]
	}
	return out, nil
}

// Paging through one volume's snapshots visits each exactly once, in order,
// and never another volume's; a lookup finds an entry or says ErrNotFound.
func TestSnapshotIndexPagesByPrefix(t *testing.T) {
	ctx := context.Background()
	g := NewRegistry(&omapStore{omap: map[string]map[string][]byte{}})
	for _, vol := range []string{"a", "b", "c"} {
		for i := 0; i < 7; i++ {
			id := fmt.Sprintf("bss1.f.1.%s.%02d", vol, i)
			if err := g.IndexSnapshot(ctx, SnapshotEntry{SnapshotID: id, SourceVolumeID: vol}); err != nil {
				t.Fatal(err)
			}
		}
	}
	var got []string
	pages := 0
	for after := ""; ; pages++ {
		page, next, err := g.Snapshots(ctx, "bss1.f.1.b.", after, 3)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range page {
			if e.SourceVolumeID != "b" {
				t.Fatalf("page holds a snapshot of %s", e.SourceVolumeID)
			}
			got = append(got, e.SnapshotID)
		}
		if next == "" {
			break
		}
		after = next
	}
	if len(got) != 7 || pages != 2 || !sort.StringsAreSorted(got) {
		t.Fatalf("got %d entries in %d+1 pages: %v", len(got), pages, got)
	}
	all, next, err := g.Snapshots(ctx, "", "", 100)
	if err != nil || len(all) != 21 || next != "" {
		t.Fatalf("whole index: %d entries, next %q, %v", len(all), next, err)
	}
	if e, err := g.Snapshot(ctx, "bss1.f.1.c.03"); err != nil || e.SourceVolumeID != "c" {
		t.Fatalf("lookup: %+v %v", e, err)
	}
	if _, err := g.Snapshot(ctx, "bss1.f.1.c.99"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing entry: %v", err)
	}
	_ = g.Store.IndexSet(ctx, snapshotIndexOID, map[string][]byte{"bss1.f.1.d.00": []byte("{")})
	if _, err := g.Snapshot(ctx, "bss1.f.1.d.00"); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("corrupt entry: %v", err)
	}
}
