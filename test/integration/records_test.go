package integration

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/basalt-csi/basalt/pkg/ceph"
	"github.com/basalt-csi/basalt/pkg/config"
	"github.com/basalt-csi/basalt/pkg/records"
)

// TestRecordsOfAnySizeReadWhole: a record read returns the whole object at
// the version it was read at, whether it fits the first read's buffer, fills
// it exactly, or is larger than any fixed buffer (2 MiB here); a stale
// version is refused.
func TestRecordsOfAnySizeReadWhole(t *testing.T) {
	ctx := tctx(t)
	conn, err := ceph.Connect(ctx, config.Backend{Name: "records", CephConf: c1.Conf, User: "admin", Keyring: c1.Keyring, Pool: "volumes"}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, size := range []int{1, 100, 16 << 10, 16<<10 + 1, 2 << 20} {
		oid := fmt.Sprintf("test-record-%d-%d", size, time.Now().UnixNano())
		data := bytes.Repeat([]byte("abcdefg"), size/7+1)[:size]
		v1, err := conn.Create(ctx, oid, data)
		if err != nil {
			t.Fatalf("create %d bytes: %v", size, err)
		}
		got, ver, err := conn.Get(ctx, oid)
		if err != nil || !bytes.Equal(got, data) || ver != v1 {
			t.Fatalf("read of %d bytes: got %d bytes (equal %v) at version %d (created %d), err %v", size, len(got), bytes.Equal(got, data), ver, v1, err)
		}
		bigger := append(data, data...)
		v2, err := conn.Update(ctx, oid, ver, bigger)
		if err != nil {
			t.Fatalf("update %d bytes: %v", size, err)
		}
		if got, ver, err = conn.Get(ctx, oid); err != nil || !bytes.Equal(got, bigger) || ver != v2 {
			t.Fatalf("read after growing to %d bytes: got %d bytes at version %d (want %d), err %v", len(bigger), len(got), ver, v2, err)
		}
		if _, err := conn.Update(ctx, oid, v1, data); !errors.Is(err, records.ErrConflict) {
			t.Fatalf("update at a stale version: %v, want a conflict", err)
		}
		if err := conn.Delete(ctx, oid); err != nil {
			t.Fatal(err)
		}
		if _, _, err := conn.Get(ctx, oid); !errors.Is(err, records.ErrNotFound) {
			t.Fatalf("read after delete: %v, want not found", err)
		}
	}
}
