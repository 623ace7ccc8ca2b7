// Package mapper connects RBD images to block devices on a node, the way
// os-brick's RBD connector does for Nova: krbd (`rbd device map`), rbd-nbd,
// or rbd-fuse plus a loop device where neither kernel module exists. Every
// mapper reuses an existing mapping of the same image, and every command it
// runs has a deadline.
package mapper

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/basalt-csi/basalt/pkg/metrics"
)

// Spec says which image to map and with which credentials. The keyring is a
// file path; the key itself never appears on a command line.
type Spec struct {
	Pool     string `json:"pool"`
	Image    string `json:"image"`
	CephConf string `json:"cephConf"`
	User     string `json:"user"`
	Keyring  string `json:"keyring"`
	ReadOnly bool   `json:"readOnly"`
	// Cookie identifies the mapping across plugin restarts (rbd-nbd re-attach).
	Cookie string `json:"cookie,omitempty"`
}

// Mapping is what Map made; it is persisted with the staging record.
type Mapping struct {
	Mapper string `json:"mapper"`
	Device string `json:"device"`
	Dir    string `json:"dir,omitempty"` // rbd-fuse mount point
	// Client is the Ceph client address of the daemon serving the mapping
	// (rbd-fuse, rbd-nbd), when the node could tell it: fenced if the
	// daemon dies, so its watch does not hold the image ~30 s.
	Client string `json:"client,omitempty"`
}

// Mapped is one mapping found on the host.
type Mapped struct {
	Spec    Spec
	Mapping Mapping
}

// listedDevice is an entry of a mapper's device listing.
type listedDevice interface {
	mapped() (Spec, string) // the image and the device
	isImage(s Spec) bool    // the head of s (not a snapshot)
}

// heads keeps the devices that map image heads, as Mapped.
func heads[D listedDevice](devs []D, mapper string) []Mapped {
	var out []Mapped
	for _, d := range devs {
		if s, dev := d.mapped(); d.isImage(s) {
			out = append(out, Mapped{s, Mapping{Mapper: mapper, Device: dev}})
		}
	}
	return out
}

// ErrPollTimeout: Poll's condition did not hold in time.
var ErrPollTimeout = errors.New("condition not met in time")

// Poll calls cond every 200 ms until it holds, fails, ctx ends or limit
// passes (ErrPollTimeout).
func Poll(ctx context.Context, limit time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(limit)
	for {
		done, err := cond()
		if done || err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return ErrPollTimeout
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// ErrGone marks a Check that found the mapping dead (as opposed to one that
// could not look, e.g. a listing command that failed): only then is healing
// (re-mapping, lazily detaching the mounts above) the right answer.
var ErrGone = errors.New("mapping is gone")

// gone is a Check failure that is conclusive; its message is the caller's.
type gone string

func (g gone) Error() string        { return string(g) }
func (g gone) Is(target error) bool { return target == ErrGone }

// Gone formats a conclusive Check failure (errors.Is(err, ErrGone)).
func Gone(format string, args ...any) error { return gone(fmt.Sprintf(format, args...)) }

// Mapper maps and unmaps images.
type Mapper interface {
	Name() string
	// Map returns a block device for spec, reusing an existing mapping of the image.
	Map(ctx context.Context, spec Spec) (Mapping, error)
	// Unmap removes the mapping; one that is already gone is success.
	Unmap(ctx context.Context, spec Spec, m Mapping) error
	// Check returns nil while the mapping is alive (its device still reaches
	// the image), an error wrapping ErrGone when it is dead.
	Check(ctx context.Context, spec Spec, m Mapping) error
	// List returns every image head this mapper has mapped on the host
	// (Spec names only Pool and Image), for the node's invariant check.
	List(ctx context.Context) ([]Mapped, error)
}

// Runner runs external commands. Tests replace it to check command lines
// and inject failures.
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// DefaultTimeout bounds every external command.
var DefaultTimeout = 2 * time.Minute

// Exec runs commands for real, each bounded by Timeout (or DefaultTimeout).
type Exec struct {
	Timeout time.Duration
	Env     []string // extra environment (e.g. CEPH_ARGS)
}

// Run implements Runner. Output goes to a buffer, and WaitDelay stops the
// wait when a daemonising child keeps the pipes open after its parent exits.
func (e Exec) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	t := e.Timeout
	if t == 0 {
		t = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, t)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), e.Env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 2 * time.Second
	start := time.Now()
	err := cmd.Run()
	metrics.ObserveCommand(name, time.Since(start), err != nil, ctx.Err() == context.DeadlineExceeded)
	if ctx.Err() == context.DeadlineExceeded {
		return out.Bytes(), fmt.Errorf("%s %s: no answer within %v", name, strings.Join(args, " "), t)
	}
	if err != nil {
		return out.Bytes(), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.Bytes(), nil
}

// Kernel tells which mapping methods the host offers.
type Kernel interface {
	HasKRBD() bool
	HasNBD() bool
	HasFUSE() bool
}

// Host probes the running kernel.
type Host struct{}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// HasKRBD implements Kernel.
func (Host) HasKRBD() bool { return exists("/sys/bus/rbd") }

// HasNBD implements Kernel.
func (Host) HasNBD() bool { return exists("/sys/module/nbd") }

// HasFUSE implements Kernel.
func (Host) HasFUSE() bool { return exists("/dev/fuse") && exists("/dev/loop-control") }

// Choose resolves --mapper: auto picks krbd if the kernel has it, else nbd,
// else fuse.
func Choose(name string, k Kernel) (string, error) {
	switch name {
	case "krbd", "nbd", "fuse":
		return name, nil
	case "", "auto":
		switch {
		case k.HasKRBD():
			return "krbd", nil
		case k.HasNBD():
			return "nbd", nil
		case k.HasFUSE():
			return "fuse", nil
		}
		return "", fmt.Errorf("no way to map RBD images on this host: no rbd or nbd kernel module, and no /dev/fuse with loop devices")
	}
	return "", fmt.Errorf("--mapper must be auto, krbd, nbd or fuse, not %q", name)
}

// cephArgs are the common connection arguments; the keyring is a path.
func cephArgs(s Spec) []string {
	return []string{"-c", s.CephConf, "--id", s.User, "--keyring", s.Keyring}
}
