package provision

import (
	"testing"

	"github.com/basalt-csi/basalt/pkg/backend"
)

func TestTrashable(t *testing.T) {
	for _, tc := range []struct {
		name string
		u    backend.Usage
		want bool
	}{
		{"blank or copy", backend.Usage{}, true},
		{"clone of a golden image", backend.Usage{ParentImage: "golden"}, true},
		{"clone of an image-cache entry", backend.Usage{ParentImage: "basalt-cache-0123-abcd"}, true},
		{"restore or clone of a volume", backend.Usage{ParentImage: "basalt-0f0e"}, false},
		{"clone of a deleted volume's image", backend.Usage{ParentImage: "basalt-deleted-0f0e"}, false},
		{"with snapshots", backend.Usage{Snapshots: 1}, false},
	} {
		if got := trashable(tc.u); got != tc.want {
			t.Errorf("%s: trashable = %v, want %v", tc.name, got, tc.want)
		}
	}
}
