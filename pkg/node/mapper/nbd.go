package mapper

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// NBD maps images with rbd-nbd, a userspace daemon serving the image to the
// kernel's nbd driver. rbd-nbd reads the keyring file itself, so only its
// path is on the command line.
//
// Command lines (Ceph 16.2 Pacific):
//
//	rbd-nbd list-mapped --format json
//	rbd-nbd map [--read-only] [--cookie <cookie>] <pool>/<image> -c <conf> --id <user> --keyring <keyring>
//	rbd-nbd attach --device <device> [--read-only] [--cookie <cookie>] <pool>/<image> -c <conf> --id <user> --keyring <keyring>
//	rbd-nbd unmap <device>
//
// list-mapped only shows devices whose rbd-nbd process is alive: it reads
// /sys/block/nbdN/pid and parses that process's command line. When the
// process dies (with the plugin container, say) the kernel keeps the device
// for --reattach-timeout seconds (30 by default) and `rbd-nbd attach` can
// serve it again; the cookie, which the kernel shows in
// /sys/block/nbdN/backend (Linux 5.14 and later), proves the device is
// still the one that was mapped.
type NBD struct {
	run Runner
	// SysBlock is where the nbd devices' sysfs directories are
	// (/sys/block); tests point it elsewhere.
	SysBlock string
}

// NewNBD returns an rbd-nbd mapper running commands with r.
func NewNBD(r Runner) *NBD {
	return &NBD{run: r, SysBlock: "/sys/block"}
}

// Name implements Mapper.
func (n *NBD) Name() string { return "nbd" }

// nbdDevice is one entry of `rbd-nbd list-mapped --format json`. Pacific
// prints {"id":4242,"pool":"rbd","namespace":"","image":"img","snap":"",
// "device":"/dev/nbd0","cookie":"..."}, where id is the rbd-nbd pid (and
// cookie is "" when the kernel keeps none, or missing in older builds).
type nbdDevice struct {
	PID       int    `json:"id"`
	Pool      string `json:"pool"`
	Namespace string `json:"namespace"`
	Image     string `json:"image"`
	Snap      string `json:"snap"`
	Device    string `json:"device"`
	Cookie    string `json:"cookie"`
}

func (d nbdDevice) isImage(s Spec) bool {
	return d.Pool == s.Pool && d.Image == s.Image && d.Namespace == "" &&
		(d.Snap == "" || d.Snap == "-")
}

func (n *NBD) list(ctx context.Context) ([]nbdDevice, error) {
	out, err := n.run.Run(ctx, "rbd-nbd", "list-mapped", "--format", "json")
	if err != nil {
		return nil, rbdCLIError("rbd-nbd list-mapped", out, err)
	}
	var devs []nbdDevice
	if err := rbdCLIJSON(out, &devs); err != nil {
		return nil, fmt.Errorf("rbd-nbd list-mapped: %v", err)
	}
	return devs, nil
}

// List implements Mapper.
func (n *NBD) List(ctx context.Context) ([]Mapped, error) {
	devs, err := n.list(ctx)
	if err != nil {
		return nil, err
	}
	return heads(devs, n.Name()), nil
}

func (d nbdDevice) mapped() (Spec, string) { return Spec{Pool: d.Pool, Image: d.Image}, d.Device }

// served finds the live rbd-nbd entry for device (nil if there is none).
func (n *NBD) served(ctx context.Context, device string) (*nbdDevice, error) {
	devs, err := n.list(ctx)
	if err != nil {
		return nil, err
	}
	for i := range devs {
		if devs[i].Device == device && devs[i].PID > 0 {
			return &devs[i], nil
		}
	}
	return nil, nil
}

// mapArgs are the options map and attach share, up to the connection
// arguments.
func nbdMapArgs(s Spec) []string {
	var a []string
	if s.ReadOnly {
		a = append(a, "--read-only")
	}
	if s.Cookie != "" {
		a = append(a, "--cookie", s.Cookie)
	}
	a = append(a, s.Pool+"/"+s.Image)
	return append(a, cephArgs(s)...)
}

// Map implements Mapper.
func (n *NBD) Map(ctx context.Context, s Spec) (Mapping, error) {
	if s.Pool == "" || s.Image == "" {
		return Mapping{}, fmt.Errorf("nbd: pool and image are required (got %q/%q)", s.Pool, s.Image)
	}
	devs, err := n.list(ctx)
	if err != nil {
		return Mapping{}, err
	}
	for _, d := range devs {
		if d.isImage(s) && d.Device != "" {
			return Mapping{Mapper: n.Name(), Device: d.Device}, nil
		}
	}
	out, err := n.run.Run(ctx, "rbd-nbd", append([]string{"map"}, nbdMapArgs(s)...)...)
	if err != nil {
		return Mapping{}, rbdCLIError(fmt.Sprintf("rbd-nbd map %s/%s", s.Pool, s.Image), out, err)
	}
	dev := rbdCLIDevice(out, "/dev/nbd")
	if dev == "" {
		return Mapping{}, fmt.Errorf("rbd-nbd map %s/%s printed no /dev/nbdN device: %s", s.Pool, s.Image, strings.TrimSpace(string(out)))
	}
	if pid, err := os.ReadFile("/sys/block/" + filepath.Base(dev) + "/pid"); err == nil {
		if p, err := strconv.Atoi(strings.TrimSpace(string(pid))); err == nil {
			_ = Outlive(p) // best effort: see Outlive
		}
	}
	return Mapping{Mapper: n.Name(), Device: dev}, nil
}

// Check implements Mapper: a live rbd-nbd process must serve the image on
// the device.
func (n *NBD) Check(ctx context.Context, s Spec, m Mapping) error {
	d, err := n.served(ctx, m.Device)
	if err != nil {
		return err
	}
	switch {
	case d == nil:
		return Gone("nbd mapping of %s/%s on %s is gone: no rbd-nbd process serves it (Reattach may revive it within rbd-nbd's reattach timeout)", s.Pool, s.Image, m.Device)
	case !d.isImage(s):
		return Gone("nbd mapping of %s/%s on %s is gone: the device now serves %s/%s", s.Pool, s.Image, m.Device, d.Pool, d.Image)
	}
	return nil
}

// Reattach starts a new rbd-nbd process serving the image on m.Device after
// the previous one died, with `rbd-nbd attach`. It does nothing while a live
// process still serves the image there. spec.Cookie must be the cookie the
// device was mapped with; on kernels without cookie support (before 5.14)
// it must be empty.
func (n *NBD) Reattach(ctx context.Context, s Spec, m Mapping) error {
	if m.Device == "" {
		return fmt.Errorf("nbd: no device to reattach %s/%s to", s.Pool, s.Image)
	}
	d, err := n.served(ctx, m.Device)
	if err != nil {
		return err
	}
	if d != nil {
		if d.isImage(s) {
			return nil
		}
		return fmt.Errorf("nbd: cannot reattach %s/%s to %s: the device now serves %s/%s", s.Pool, s.Image, m.Device, d.Pool, d.Image)
	}
	args := append([]string{"attach", "--device", m.Device}, nbdMapArgs(s)...)
	out, err := n.run.Run(ctx, "rbd-nbd", args...)
	if err == nil {
		return nil
	}
	what := fmt.Sprintf("rbd-nbd attach %s/%s to %s", s.Pool, s.Image, m.Device)
	msg := string(out) + " " + err.Error()
	switch {
	case strings.Contains(msg, "kernel does not have cookie support"):
		return rbdCLIError(what+": this kernel's nbd driver keeps no cookie (Linux < 5.14); reattach without one", out, err)
	case strings.Contains(msg, "cookie mismatch"):
		return rbdCLIError(what+": the device was mapped with another cookie, so it is no longer this mapping", out, err)
	case strings.Contains(msg, "must specify cookie"):
		return rbdCLIError(what+": the device has a cookie and none was given", out, err)
	}
	return rbdCLIError(what, out, err)
}

// cookieOf reads the cookie the kernel keeps for an nbd device ("" if none).
func (n *NBD) cookieOf(device string) string {
	b, err := os.ReadFile(filepath.Join(n.SysBlock, filepath.Base(device), "backend"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// ours tells whether m.Device still belongs to the mapping: a live rbd-nbd
// serves the image there, or no process does but the kernel still holds
// the device under spec.Cookie (its rbd-nbd died and was not reattached).
func (n *NBD) ours(ctx context.Context, s Spec, m Mapping) (bool, error) {
	d, err := n.served(ctx, m.Device)
	if err != nil {
		return false, err
	}
	if d != nil {
		return d.isImage(s), nil
	}
	return s.Cookie != "" && n.cookieOf(m.Device) == s.Cookie, nil
}

// Unmap implements Mapper. A device that no longer belongs to the mapping
// is left alone and counts as unmapped.
func (n *NBD) Unmap(ctx context.Context, s Spec, m Mapping) error {
	if m.Device == "" {
		// A map that was interrupted before it said which device it made:
		// unmap whatever serves this image.
		devs, err := n.list(ctx)
		if err != nil {
			return err
		}
		for _, d := range devs {
			if d.isImage(s) && d.Device != "" {
				if err := n.Unmap(ctx, s, Mapping{Mapper: m.Mapper, Device: d.Device}); err != nil {
					return err
				}
			}
		}
		return nil
	}
	mine, err := n.ours(ctx, s, m)
	if err != nil || !mine {
		return err
	}
	out, err := n.run.Run(ctx, "rbd-nbd", "unmap", m.Device)
	if err == nil {
		return nil
	}
	// It may have gone away meanwhile.
	if mine, lerr := n.ours(ctx, s, m); lerr == nil && !mine {
		return nil
	}
	return rbdCLIError(fmt.Sprintf("rbd-nbd unmap %s (%s/%s)", m.Device, s.Pool, s.Image), out, err)
}
