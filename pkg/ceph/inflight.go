package ceph

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// inflight tracks the calls that create or write an image, by image name,
// for as long as they really run. A caller that gave up at its deadline
// reverts its work with RemoveImage; librbd may still be creating the image
// then, and a removal that ran first would find nothing ("absent is
// success") and leave the image to appear afterwards with no record
// pointing at it. So RemoveImage waits for those calls first.
type inflight struct {
	mu  sync.Mutex
	ops map[string]*imageOps
}

// busy is shared by every connection of the process and keyed by cluster
// and image name (see busyKey): a live migration works on one image name
// through the connections of two backends (pools) of one cluster.
var busy inflight

// busyKey names image of c's cluster in busy. Image names are unique per
// cluster (they carry the volume's UUID), whatever pool they are in.
func (c *Conn) busyKey(image string) string { return c.fsid + "/" + image }

type imageOps struct {
	n    int
	done chan struct{} // closed when n drops to 0
}

// start registers an operation on image; the returned func ends it and may
// be called more than once.
func (f *inflight) start(image string) func() {
	f.mu.Lock()
	if f.ops == nil {
		f.ops = map[string]*imageOps{}
	}
	o := f.ops[image]
	if o == nil {
		o = &imageOps{done: make(chan struct{})}
		f.ops[image] = o
	}
	o.n++
	f.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			f.mu.Lock()
			defer f.mu.Unlock()
			if o.n--; o.n == 0 {
				close(o.done)
				delete(f.ops, image)
			}
		})
	}
}

// running reports whether an operation on image runs.
func (f *inflight) running(image string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ops[image] != nil
}

// wait returns once no operation on image runs, or ctx's error.
func (f *inflight) wait(ctx context.Context, image string) error {
	f.mu.Lock()
	o := f.ops[image]
	f.mu.Unlock()
	if o == nil {
		return nil
	}
	select {
	case <-o.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s is still being written by a call that timed out: %w", image, ctx.Err())
	}
}

// writing runs f, a call's body, as an operation on image: registered
// before the call is made, ended when f returns, whenever that is (or at
// once if the call never started because the connection was closed).
func (c *Conn) writing(ctx context.Context, s *scope, what, image string, f func() error) error {
	end := busy.start(c.busyKey(image))
	err := do(ctx, s, what, func() error {
		defer end()
		return f()
	})
	if errors.Is(err, ErrClosed) {
		end()
	}
	return err
}
