package provision

import (
	"errors"
	"fmt"
	"testing"

	"github.com/basalt-csi/basalt/pkg/backend"
	"github.com/basalt-csi/basalt/pkg/records"
)

func TestChooseSize(t *testing.T) {
	img := &backend.ImageSpec{Pool: "p", Image: "i", Snap: "s"}
	for _, tc := range []struct {
		req       Request
		imageSize uint64
		want      uint64
		kind      Kind
	}{
		{Request{RequiredBytes: 1}, 0, mib, 0},
		{Request{RequiredBytes: 5 * mib}, 0, 5 * mib, 0},
		{Request{RequiredBytes: 5*mib + 1}, 0, 6 * mib, 0},
		{Request{}, 0, defaultBlank, 0},
		{Request{LimitBytes: 100 * mib}, 0, 100 * mib, 0},
		{Request{Image: img}, 64 * mib, 64 * mib, 0},
		{Request{Image: img, RequiredBytes: 1 << 30}, 64 * mib, 1 << 30, 0},
		{Request{RequiredBytes: 2*mib + 1, LimitBytes: 2*mib + 100}, 0, 2*mib + 1, 0}, // no whole MiB: exact
		{Request{RequiredBytes: 2 * mib, LimitBytes: 2*mib + 100}, 0, 2 * mib, 0},
		{Request{LimitBytes: mib - 1}, 0, mib - 1, 0},
		{Request{Image: img, LimitBytes: 64*mib + 5}, 64*mib + 3, 64*mib + 3, 0},
		{Request{Image: img, LimitBytes: 64 * mib}, 64*mib + 3, 0, OutOfRange},
		{Request{Image: img, RequiredBytes: 16 * mib}, 64 * mib, 0, OutOfRange},
	} {
		got, err := chooseSize(tc.req, tc.imageSize)
		var pe *Error
		switch {
		case tc.kind != 0:
			if !errors.As(err, &pe) || pe.Kind != tc.kind {
				t.Errorf("%+v: got %d, %v; want kind %d", tc.req, got, err, tc.kind)
			}
		case err != nil || got != tc.want:
			t.Errorf("%+v: got %d, %v; want %d", tc.req, got, err, tc.want)
		}
	}
}

func TestCompatible(t *testing.T) {
	res := records.Reservation{Name: "n", SizeBytes: 10 * mib, Params: map[string]string{"image": "a/b@c"}}
	if err := compatible(res, Request{Name: "n", RequiredBytes: 10 * mib, Params: map[string]string{"image": "a/b@c"}}); err != nil {
		t.Fatal(err)
	}
	if err := compatible(records.Reservation{SizeBytes: mib}, Request{Params: map[string]string{}}); err != nil {
		t.Fatalf("nil and empty params must match: %v", err)
	}
	for _, req := range []Request{
		{Name: "n", RequiredBytes: 11 * mib, Params: res.Params},
		{Name: "n", LimitBytes: 9 * mib, Params: res.Params},
		{Name: "n", Params: map[string]string{"image": "a/b@d"}},
		{Name: "n"},
	} {
		var pe *Error
		if err := compatible(res, req); !errors.As(err, &pe) || pe.Kind != AlreadyExists {
			t.Errorf("%+v: got %v, want AlreadyExists", req, err)
		}
	}
}

// A compare-and-write conflict means another writer won a race: retryable
// (Aborted), not Internal.
func TestClassifyConflictIsAborted(t *testing.T) {
	var pe *Error
	err := classify(fmt.Errorf("updating: %w", records.ErrConflict), "saving the reservation")
	if !errors.As(err, &pe) || pe.Kind != Aborted {
		t.Fatalf("classify(conflict) = %v, want Aborted", err)
	}
}

func TestDepthOf(t *testing.T) {
	for md, want := range map[string]int{"": 0, "x": 0, "-2": 0, "0": -1, "1": 1, "7": 7} {
		m := map[string]string{}
		if md != "" {
			m[MetaDepth] = md
		}
		if got := depthOf(m); got != want {
			t.Errorf("depthOf(%q) = %d, want %d", md, got, want)
		}
	}
}
