package provision

import (
	"testing"
	"time"

	"github.com/basalt-csi/basalt/pkg/backend"
	"github.com/basalt-csi/basalt/pkg/records"
)

func TestChooseEvictions(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	at := func(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }
	e := func(key, source string, created, used int, gib uint64) records.CacheEntry {
		return records.CacheEntry{Key: key, Source: source, Created: at(created), LastUsed: at(used), SizeBytes: gib << 30}
	}
	keys := func(ev []eviction) map[string]string {
		m := map[string]string{}
		for _, v := range ev {
			m[v.entry.Key] = v.reason
		}
		return m
	}
	for _, tc := range []struct {
		name    string
		entries []records.CacheEntry
		keep    string
		count   int
		sizeGiB uint64
		want    map[string]string
	}{
		{"within the limits", []records.CacheEntry{e("a", "p/x@1", 0, 5, 1), e("b", "p/y@1", 1, 2, 1)}, "b", 2, 2, map[string]string{}},
		{"least recently used over the count", []records.CacheEntry{e("a", "p/x@1", 0, 5, 1), e("b", "p/y@1", 1, 2, 1), e("c", "p/z@1", 3, 3, 1)}, "c", 2, 0,
			map[string]string{"b": "count"}},
		{"the new entry is kept even when least recently used", []records.CacheEntry{e("a", "p/x@1", 0, 5, 1), e("c", "p/z@1", 3, 3, 1)}, "c", 1, 0,
			map[string]string{"a": "count"}},
		{"over the size", []records.CacheEntry{e("a", "p/x@1", 0, 1, 3), e("b", "p/y@1", 1, 2, 3), e("c", "p/z@1", 3, 3, 3)}, "c", 0, 7,
			map[string]string{"a": "size"}},
		{"a replaced snapshot's entry is stale", []records.CacheEntry{e("old", "p/x@1", 0, 9, 1), e("new", "p/x@1", 4, 4, 1)}, "new", 0, 0,
			map[string]string{"old": "stale"}},
		{"no bound", []records.CacheEntry{e("a", "p/x@1", 0, 1, 100), e("b", "p/y@1", 1, 2, 100)}, "b", 0, 0, map[string]string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := keys(chooseEvictions(tc.entries, tc.keep, tc.count, tc.sizeGiB<<30))
			if len(got) != len(tc.want) {
				t.Fatalf("evicted %v, want %v", got, tc.want)
			}
			for k, r := range tc.want {
				if got[k] != r {
					t.Fatalf("evicted %v, want %v", got, tc.want)
				}
			}
		})
	}
}

func TestCacheKeyChangesWithTheSnapshot(t *testing.T) {
	spec := backend.ImageSpec{Pool: "images", Image: "golden", Snap: "v1"}
	a := backend.SnapshotInfo{SizeBytes: 1 << 30, ID: 4, CreatedUnixNano: 100}
	b := a
	b.ID, b.CreatedUnixNano = 5, 200 // the same name, made again
	if cacheKey(spec, a.Fingerprint("f1")) == cacheKey(spec, b.Fingerprint("f1")) {
		t.Fatal("a replaced snapshot must get another cache key")
	}
	if cacheKey(spec, a.Fingerprint("f1")) != cacheKey(spec, a.Fingerprint("f1")) {
		t.Fatal("the key must be stable")
	}
	other := spec
	other.Image = "golden2"
	if cacheKey(spec, a.Fingerprint("f1")) == cacheKey(other, a.Fingerprint("f1")) {
		t.Fatal("another image must get another key")
	}
}
