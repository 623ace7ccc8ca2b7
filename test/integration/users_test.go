package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// asUser runs a ceph/rbd/rados CLI command against c as cephx user
// basalt-<who> with the keyring deploy/ceph-users.sh wrote.
func (c *cluster) asUser(t *testing.T, keyring, who string, tool string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	full := append([]string{"-c", c.Conf, "--id", "basalt-" + who, "--keyring", keyring}, args...)
	out, err := exec.CommandContext(ctx, tool, full...).CombinedOutput()
	return string(out), err
}

// TestCephUsersAreLeastPrivilege runs the whole volume lifecycle with the
// two users deploy/ceph-users.sh makes (the controller as basalt-controller,
// the node plugin as basalt-node, as every node plugin of these tests runs),
// then checks that the node user, which every node holds, cannot do
// controller work: create, clone or remove images, or write Basalt's
// records.
func TestCephUsersAreLeastPrivilege(t *testing.T) {
	yaml := strings.ReplaceAll(configYAML(), "user: admin\n    keyring: "+c1.Keyring, "user: basalt-controller\n    keyring: "+c1.CtlKeyring)
	yaml = strings.ReplaceAll(yaml, "user: admin\n    keyring: "+c2.Keyring, "user: basalt-controller\n    keyring: "+c2.CtlKeyring)
	if strings.Contains(yaml, "user: admin") {
		t.Fatalf("the controller still runs as admin somewhere:\n%s", yaml)
	}
	d := startDriver(t, yaml, nil)
	n := startNode(t, d, "node-least-privilege")
	ctx := tctx(t)

	// The controller's whole surface as basalt-controller.
	// Pinned to a-std (pool volumes), which the refusals below name.
	std := map[string]string{"capability.tier": "standard"}
	v := create(t, d, "pvc-users", gib, map[string]string{"image": golden, "capability.tier": "standard"}, zoneReq("zone-a"))
	vol := v.GetVolumeId()
	snap := snapshot(t, d, "snap-users", vol)
	restored, err := createFrom(ctx, d, "pvc-users-restored", fromSnapshot(snap.GetSnapshotId()), std)
	must(t, err)
	vc := mountVC("ext4")
	_, err = publish(ctx, d.ctrl, vol, n.id, vc, false)
	must(t, err)

	// The node's as basalt-node: map, grow the filesystem, write through.
	root := t.TempDir()
	staging, target := filepath.Join(root, "staging"), filepath.Join(root, "target")
	must(t, os.MkdirAll(staging, 0o750))
	must(t, stage(ctx, n, vol, staging, vc))
	must(t, nodePublish(ctx, n, vol, staging, target, vc, false))
	must(t, os.WriteFile(filepath.Join(target, "mine.txt"), []byte("written as basalt-node\n"), 0o644))

	// What a compromised node could try with its key. Each must be refused
	// by Ceph for lack of permission (not for any other reason).
	image := imageOf(t, v)
	// The volume's name reservation, an object that exists (a refusal to
	// remove a missing object would prove nothing).
	sum := sha256.Sum256([]byte("pvc-users"))
	reservation := "basalt.name." + hex.EncodeToString(sum[:20])
	if out, err := exec.Command("rados", "-c", c1.Conf, "-p", "volumes", "-N", "basalt", "stat", reservation).CombinedOutput(); err != nil {
		t.Fatalf("the reservation object %s: %v %s", reservation, err, out)
	}
	other := imageOf(t, restored)
	for _, try := range []struct {
		what string
		tool string
		args []string
	}{
		{"remove a volume's image", "rbd", []string{"rm", "volumes/" + other}},
		{"rename an image", "rbd", []string{"mv", "volumes/" + other, "volumes/stolen"}},
		{"create an image", "rbd", []string{"create", "--size", "1M", "volumes/basalt-forged"}},
		{"clone the golden image", "rbd", []string{"clone", golden, "volumes/basalt-forged"}},
		{"write an attachment record", "rados", []string{"-p", "volumes", "-N", "basalt", "put", "basalt.attach.forged", "/dev/null"}},
		{"edit the volume index", "rados", []string{"-p", "volumes", "-N", "basalt", "setomapval", "basalt.volumes", "forged", "x"}},
		{"drop a name reservation", "rados", []string{"-p", "volumes", "-N", "basalt", "rm", reservation}},
		{"snapshot the golden image", "rbd", []string{"snap", "create", "images/golden@forged"}},
		{"write into the golden image's pool", "rados", []string{"-p", "images", "put", "rbd_data.forged", "/dev/null"}},
	} {
		out, err := c1.asUser(t, c1.NodeKeyring, "node", try.tool, try.args...)
		if err == nil {
			t.Errorf("the node user could %s (%s %v):\n%s", try.what, try.tool, try.args, out)
		} else if !strings.Contains(out, "Operation not permitted") && !strings.Contains(out, "permission denied") {
			t.Errorf("%s as the node user failed, but not for lack of permission:\n%s", try.what, out)
		}
	}
	// ... while reading is allowed (the refusals above are about writing),
	// and both images are still there.
	for _, img := range []string{image, other} {
		if out, err := c1.asUser(t, c1.NodeKeyring, "node", "rbd", "info", "volumes/"+img); err != nil {
			t.Fatalf("the node user cannot read the header of %s: %v\n%s", img, err, out)
		}
	}

	nodeUnpublish(t, n, vol, target)
	unstage(t, n, vol, staging)
	unpublish(t, d.ctrl, vol, n.id)
	if left := n.leftovers(t, staging, target); len(left) > 0 {
		t.Fatalf("left after unstage: %v", left)
	}
	del(t, d, restored.GetVolumeId())
	delSnap(t, d, snap.GetSnapshotId())
	del(t, d, vol)
	if left := leftovers(t, d, c1, "volumes"); len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
}
