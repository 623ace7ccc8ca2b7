package mapper

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
)

// KRBD maps images with the kernel RBD client (`rbd device map`).
//
// The kernel client cannot read a keyring itself: `rbd device map` hands it
// the secret. KRBD therefore extracts the user's key from spec.Keyring,
// writes it alone to a private (0600) file in keyDir, passes that file with
// --keyfile and removes it as soon as the command returns, so the key never
// appears on a command line.
//
// Command lines (Ceph 16.2 Pacific):
//
//	rbd device list --device-type krbd --format json [-c <conf>]
//	rbd device map --device-type krbd [--read-only] <pool>/<image> -c <conf> --id <user> --keyfile <file>
//	rbd device unmap --device-type krbd <device> [-c <conf>]
//
// Listing and unmapping only read and write sysfs, so they get no
// credentials; -c only keeps the rbd tool from complaining about a missing
// /etc/ceph/ceph.conf.
type KRBD struct {
	run    Runner
	keyDir string
}

// NewKRBD returns a krbd mapper running commands with r and writing its
// short-lived key files in keyDir ("" means os.TempDir()).
func NewKRBD(r Runner, keyDir string) *KRBD {
	return &KRBD{run: r, keyDir: keyDir}
}

// Name implements Mapper.
func (k *KRBD) Name() string { return "krbd" }

// krbdDevice is one entry of `rbd device list --format json`. Pacific prints
// {"id":"0","pool":"rbd","namespace":"","name":"img","snap":"-","device":"/dev/rbd0"}.
type krbdDevice struct {
	ID        string `json:"id"`
	Pool      string `json:"pool"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Snap      string `json:"snap"`
	Device    string `json:"device"`
}

// isImage tells whether the entry is the head (not a snapshot) of s's image.
func (d krbdDevice) isImage(s Spec) bool {
	return d.Pool == s.Pool && d.Name == s.Image && d.Namespace == "" &&
		(d.Snap == "" || d.Snap == "-")
}

func rbdCLIConf(s Spec) []string {
	if s.CephConf == "" {
		return nil
	}
	return []string{"-c", s.CephConf}
}

func (k *KRBD) list(ctx context.Context, s Spec) ([]krbdDevice, error) {
	args := append([]string{"device", "list", "--device-type", "krbd", "--format", "json"}, rbdCLIConf(s)...)
	out, err := k.run.Run(ctx, "rbd", args...)
	if err != nil {
		return nil, rbdCLIError("listing krbd devices", out, err)
	}
	var devs []krbdDevice
	if err := rbdCLIJSON(out, &devs); err != nil {
		return nil, fmt.Errorf("listing krbd devices: %v", err)
	}
	return devs, nil
}

// List implements Mapper.
func (k *KRBD) List(ctx context.Context) ([]Mapped, error) {
	devs, err := k.list(ctx, Spec{})
	if err != nil {
		return nil, err
	}
	return heads(devs, k.Name()), nil
}

func (d krbdDevice) mapped() (Spec, string) { return Spec{Pool: d.Pool, Image: d.Name}, d.Device }

// Map implements Mapper.
func (k *KRBD) Map(ctx context.Context, s Spec) (Mapping, error) {
	if s.Pool == "" || s.Image == "" {
		return Mapping{}, fmt.Errorf("krbd: pool and image are required (got %q/%q)", s.Pool, s.Image)
	}
	devs, err := k.list(ctx, s)
	if err != nil {
		return Mapping{}, err
	}
	for _, d := range devs {
		if d.isImage(s) && d.Device != "" {
			return Mapping{Mapper: k.Name(), Device: d.Device}, nil
		}
	}
	if s.User == "" {
		return Mapping{}, fmt.Errorf("krbd: no ceph user given to map %s/%s", s.Pool, s.Image)
	}
	key, err := rbdCLIKey(s.Keyring, s.User)
	if err != nil {
		return Mapping{}, err
	}
	keyFile, err := rbdCLIKeyFile(k.keyDir, key)
	if err != nil {
		return Mapping{}, err
	}
	defer os.Remove(keyFile)

	args := []string{"device", "map", "--device-type", "krbd"}
	if s.ReadOnly {
		args = append(args, "--read-only")
	}
	args = append(args, s.Pool+"/"+s.Image)
	args = append(args, rbdCLIConf(s)...)
	args = append(args, "--id", s.User, "--keyfile", keyFile)
	out, err := k.run.Run(ctx, "rbd", args...)
	if err != nil {
		return Mapping{}, rbdCLIError(fmt.Sprintf("rbd device map %s/%s", s.Pool, s.Image), out, err)
	}
	dev := rbdCLIDevice(out, "/dev/rbd")
	if dev == "" {
		return Mapping{}, fmt.Errorf("rbd device map %s/%s printed no /dev/rbdN device: %s", s.Pool, s.Image, strings.TrimSpace(string(out)))
	}
	return Mapping{Mapper: k.Name(), Device: dev}, nil
}

// Unmap implements Mapper. A device that is no longer listed, or that now
// carries another image, is left alone and counts as unmapped.
func (k *KRBD) Unmap(ctx context.Context, s Spec, m Mapping) error {
	if m.Device == "" {
		// A map that was interrupted (killed, timed out) before it said
		// which device it made: unmap whatever maps this image.
		devs, err := k.list(ctx, s)
		if err != nil {
			return err
		}
		for _, d := range devs {
			if d.isImage(s) && d.Device != "" {
				if err := k.Unmap(ctx, s, Mapping{Mapper: m.Mapper, Device: d.Device}); err != nil {
					return err
				}
			}
		}
		return nil
	}
	devs, err := k.list(ctx, s)
	if err != nil {
		return err
	}
	ours := false
	for _, d := range devs {
		if d.Device == m.Device && d.isImage(s) {
			ours = true
		}
	}
	if !ours {
		return nil
	}
	args := append([]string{"device", "unmap", "--device-type", "krbd", m.Device}, rbdCLIConf(s)...)
	out, err := k.run.Run(ctx, "rbd", args...)
	if err == nil {
		return nil
	}
	// The device vanished between the listing and the unmap.
	msg := string(out) + " " + err.Error()
	for _, gone := range []string{"is not a block device", "is not an rbd device", "not a mapped image", "No such file or directory"} {
		if strings.Contains(msg, gone) {
			return nil
		}
	}
	return rbdCLIError(fmt.Sprintf("rbd device unmap %s (%s/%s)", m.Device, s.Pool, s.Image), out, err)
}

// Check implements Mapper: the device must still be listed for the image.
func (k *KRBD) Check(ctx context.Context, s Spec, m Mapping) error {
	devs, err := k.list(ctx, s)
	if err != nil {
		return err
	}
	var elsewhere []string
	for _, d := range devs {
		if !d.isImage(s) {
			continue
		}
		if d.Device == m.Device {
			return nil
		}
		elsewhere = append(elsewhere, d.Device)
	}
	if len(elsewhere) > 0 {
		return Gone("krbd mapping of %s/%s on %s is gone (the image is mapped on %s instead)", s.Pool, s.Image, m.Device, strings.Join(elsewhere, ", "))
	}
	return Gone("krbd mapping of %s/%s on %s is gone", s.Pool, s.Image, m.Device)
}

// rbdCLIKey returns the key of client.<user> in a Ceph keyring file:
//
//	[client.admin]
//		key = AQ...==
//		caps mon = "allow *"
func rbdCLIKey(path, user string) (string, error) {
	if path == "" {
		return "", fmt.Errorf("no keyring given for client.%s", user)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading keyring: %v", err)
	}
	want := "client." + user
	section, found := "", false
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			section = strings.TrimSpace(line[1 : len(line)-1])
			if section == want {
				found = true
			}
			continue
		}
		if section != want {
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		if !ok || strings.TrimSpace(name) != "key" {
			continue
		}
		value = strings.TrimSpace(value)
		if len(value) >= 2 && value[0] == '"' && value[len(value)-1] == '"' {
			value = value[1 : len(value)-1]
		}
		if value == "" {
			return "", fmt.Errorf("keyring %s: empty key for %s", path, want)
		}
		return value, nil
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("reading keyring %s: %v", path, err)
	}
	if found {
		return "", fmt.Errorf("keyring %s: section [%s] has no key", path, want)
	}
	return "", fmt.Errorf("keyring %s has no section [%s]", path, want)
}

// rbdCLIKeyFile writes key alone to a new 0600 file in dir and returns its path.
func rbdCLIKeyFile(dir, key string) (string, error) {
	f, err := os.CreateTemp(dir, "krbd-key-*")
	if err != nil {
		return "", fmt.Errorf("creating key file: %v", err)
	}
	name := f.Name()
	err = f.Chmod(0o600)
	if err == nil {
		_, err = f.WriteString(key)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(name)
		return "", fmt.Errorf("writing key file: %v", err)
	}
	return name, nil
}

// rbdCLIError describes a failed command, making sure its output is in the
// message (Exec puts it there already; other Runners may not).
func rbdCLIError(what string, out []byte, err error) error {
	o := strings.TrimSpace(string(out))
	if o == "" || strings.Contains(err.Error(), o) {
		return fmt.Errorf("%s: %w", what, err)
	}
	return fmt.Errorf("%s: %w: %s", what, err, o)
}

// rbdCLIDevice finds the device path the map commands print on stdout among
// whatever the tools logged on stderr (Exec mixes the two): the first word
// of the first line starting with prefix and a number.
func rbdCLIDevice(out []byte, prefix string) string {
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], prefix) {
			continue
		}
		n := f[0][len(prefix):]
		if n != "" && strings.Trim(n, "0123456789") == "" {
			return f[0]
		}
	}
	return ""
}

// rbdCLIJSON decodes the JSON array a list command printed, skipping log
// lines around it.
func rbdCLIJSON(out []byte, v any) error {
	var first error
	for i := 0; i < len(out); i++ {
		if out[i] != '[' || (i > 0 && out[i-1] != '\n') {
			continue
		}
		err := json.NewDecoder(bytes.NewReader(out[i:])).Decode(v)
		if err == nil {
			return nil
		}
		if first == nil {
			first = err
		}
	}
	if first == nil {
		return fmt.Errorf("no JSON list in output: %q", strings.TrimSpace(string(out)))
	}
	return fmt.Errorf("bad JSON list in output %q: %v", strings.TrimSpace(string(out)), first)
}
