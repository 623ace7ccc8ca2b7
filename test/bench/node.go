package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/basalt-csi/basalt/pkg/node/mapper"
	"github.com/basalt-csi/basalt/pkg/volumeid"
)

// nodeVol is one volume of the node part, Basalt's or the baseline's.
type nodeVol struct {
	id      string            // Basalt volume ID
	volCtx  map[string]string // its volume_context, which a CO passes to NodeStage
	image   string            // baseline image name
	dir     string            // baseline rbd-fuse mount point
	dev     string            // baseline loop device
	stage   string
	target  string
	staged  bool
	tried   bool // Basalt: NodeStage was called
	mounted bool // baseline: stage and target mounted
}

// node measures NodeStage+NodePublish and NodeUnpublish+NodeUnstage with
// the fuse mapper on blank volumes against the same steps as commands:
//
//	rbd-fuse -c CONF -p volumes -r IMG DIR; losetup --find --show DIR/IMG;
//	mkfs.ext4 -q -E nodiscard,lazy_itable_init=1,lazy_journal_init=1 DEV;
//	mount DEV STAGE; mount --bind STAGE TARGET
//	umount TARGET; umount STAGE; losetup -d DEV; fusermount -u DIR
//
// Both sides use blank 1 GiB images, so both format. ControllerPublish (a
// precondition of NodeStage), volume creation and deletion are untimed.
// The i-th Basalt and baseline operations alternate.
func (b *bench) node(ctx context.Context) error {
	o := b.o
	n := o.nodeN
	ids, err := b.makeBlank(ctx, "node", n, 4)
	bas := make([]*nodeVol, n)
	base := make([]*nodeVol, n)
	// Untimed clean-up, whatever happened: unpublish/unstage what is still
	// staged, then remove the volumes and images.
	defer func() {
		if b.interrupted() {
			return // the bench's teardown unmounts and unmaps; the cluster goes
		}
		cctx := context.WithoutCancel(ctx)
		for _, v := range bas {
			if v != nil && (v.staged || v.tried) {
				_ = runOne(cctx, func(ctx context.Context) error { return b.nodeTeardown(ctx, v) })
			}
			if v != nil {
				_ = runOne(cctx, func(ctx context.Context) error {
					_, err := b.env.ctrl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: v.id, NodeId: nodeID})
					return err
				})
			}
		}
		for _, v := range base {
			if v != nil && (v.mounted || v.dev != "" || mapper.IsMountPoint(v.dir)) {
				_ = runOne(cctx, func(ctx context.Context) error { return b.shellTeardown(ctx, v) })
			}
		}
		b.deleteAll(cctx, ids, 4)
		for _, v := range base {
			if v == nil {
				continue
			}
			if err := waitRBDFuseGone(cctx, v.dir, 30*time.Second); err != nil {
				b.noteCleanup("baseline %s: %v", v.image, err)
			}
			var rerr error
			for attempt := 0; attempt < 20; attempt++ {
				if rerr = runOne(cctx, func(ctx context.Context) error {
					return cephCall(ctx, "remove", func() error { return b.baselineRemove(v.image) })
				}); rerr == nil {
					break
				}
				time.Sleep(3 * time.Second)
			}
			if rerr != nil {
				b.noteCleanup("baseline image %s: %v", v.image, rerr)
			}
		}
	}()
	if err != nil {
		return err
	}
	root := filepath.Join(b.env.tmp, "node")
	for i := 0; i < n; i++ {
		bas[i] = &nodeVol{id: ids[i],
			stage:  filepath.Join(root, "basalt", "stage", strconv.Itoa(i)),
			target: filepath.Join(root, "basalt", "target", strconv.Itoa(i))}
		// Untimed: a CO has the volume_context from the PV already.
		gv, err := b.env.ctrl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: ids[i]})
		if err != nil {
			return fmt.Errorf("ControllerGetVolume: %w", err)
		}
		bas[i].volCtx = gv.GetVolume().GetVolumeContext()
		img := b.nameOf("shell", i)
		base[i] = &nodeVol{image: img,
			dir:    filepath.Join(root, "shell", "fuse", img),
			stage:  filepath.Join(root, "shell", "stage", strconv.Itoa(i)),
			target: filepath.Join(root, "shell", "target", strconv.Itoa(i))}
		for _, d := range []string{bas[i].stage, bas[i].target, base[i].dir, base[i].stage, base[i].target} {
			if err := os.MkdirAll(d, 0o750); err != nil {
				return err
			}
		}
		if err := runOne(ctx, func(ctx context.Context) error {
			return cephCall(ctx, "create", func() error { return b.baselineCreateBlank(img) })
		}); err != nil {
			base[i] = nil
			return fmt.Errorf("creating baseline image %s: %w", img, err)
		}
		if err := runOne(ctx, func(ctx context.Context) error {
			_, err := b.env.ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{
				VolumeId: ids[i], NodeId: nodeID, VolumeCapability: mountCap()})
			return err
		}); err != nil {
			return fmt.Errorf("ControllerPublish %s: %w", ids[i], err)
		}
	}

	// Timed, one pair at a time (concurrency 1), alternating implementations.
	up := [2]*batch{{n: n, conc: 1}, {n: n, conc: 1}}
	down := [2]*batch{{n: n, conc: 1}, {n: n, conc: 1}}
	timed := func(bt *batch, i int, f func(ctx context.Context) error) {
		if ctx.Err() != nil {
			bt.fail(i, ctx.Err())
			return
		}
		t0 := time.Now()
		err := runOne(ctx, f)
		d := time.Since(t0)
		bt.wall += d
		if err != nil {
			bt.fail(i, err)
			return
		}
		bt.lat = append(bt.lat, d)
	}
	for i := 0; i < n; i++ {
		v, w := bas[i], base[i]
		timed(up[0], i, func(ctx context.Context) error { return b.nodeSetup(ctx, v) })
		timed(up[1], i, func(ctx context.Context) error { return b.shellSetup(ctx, w) })
	}
	// Basalt's unstage returns once its rbd-fuse daemon has exited (so the
	// image has no watcher left); the shell baseline stops at fusermount.
	// How long the daemon takes to go after that is measured, untimed.
	// Basalt reaps its daemon in the background: waiting for it too, untimed,
	// keeps that work out of the next measurement.
	var exitWait []float64
	for i := 0; i < n; i++ {
		v, w := bas[i], base[i]
		timed(down[0], i, func(ctx context.Context) error {
			if !v.staged {
				return errors.New("not staged (stage failed)")
			}
			return b.nodeTeardown(ctx, v)
		})
		if id, err := volumeid.Parse(v.id); err == nil {
			_ = waitRBDFuseGone(ctx, filepath.Join(b.env.tmp, "state", "fuse", "volumes", id.ImageName()), 30*time.Second)
		}
		timed(down[1], i, func(ctx context.Context) error {
			if !w.mounted {
				return errors.New("not set up (setup failed)")
			}
			return b.shellTeardown(ctx, w)
		})
		t0 := time.Now()
		if err := waitRBDFuseGone(ctx, w.dir, 30*time.Second); err == nil {
			exitWait = append(exitWait, ms(time.Since(t0)))
		}
	}
	sort.Float64s(exitWait)
	exitNote := ""
	if len(exitWait) > 0 {
		exitNote = fmt.Sprintf("; then the rbd-fuse daemon exits (not timed on either side: Basalt reaps it in the background): p50 %s ms", fmtMs(percentile(exitWait, 0.5)))
	}
	b.addRow("NodeStage+NodePublish", implBasalt, true, up[0], "fuse mapper, blank volume: map, mkfs.ext4, mount, bind")
	b.addRow("NodeStage+NodePublish", implBaseline, true, up[1], "shell: rbd-fuse, losetup, mkfs.ext4, mount, mount --bind")
	b.addRow("NodeUnpublish+NodeUnstage", implBasalt, true, down[0], "fuse mapper")
	b.addRow("NodeUnpublish+NodeUnstage", implBaseline, true, down[1], "shell: umount x2, losetup -d, fusermount -u"+exitNote)
	return nil
}

func (b *bench) nodeSetup(ctx context.Context, v *nodeVol) error {
	v.tried = true
	if _, err := b.env.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{
		VolumeId: v.id, StagingTargetPath: v.stage, VolumeCapability: mountCap(), VolumeContext: v.volCtx,
	}); err != nil {
		return fmt.Errorf("NodeStageVolume: %w", err)
	}
	v.staged = true
	if _, err := b.env.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
		VolumeId: v.id, StagingTargetPath: v.stage, TargetPath: v.target, VolumeCapability: mountCap(),
	}); err != nil {
		return fmt.Errorf("NodePublishVolume: %w", err)
	}
	return nil
}

func (b *bench) nodeTeardown(ctx context.Context, v *nodeVol) error {
	if _, err := b.env.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: v.target}); err != nil {
		return fmt.Errorf("NodeUnpublishVolume: %w", err)
	}
	if _, err := b.env.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.stage}); err != nil {
		return fmt.Errorf("NodeUnstageVolume: %w", err)
	}
	v.staged, v.tried = false, false
	return nil
}

// shellSetup is the baseline: the commands an administrator would run.
func (b *bench) shellSetup(ctx context.Context, v *nodeVol) error {
	cephArgs := []string{"CEPH_ARGS=--id admin --keyring " + b.env.keyring}
	if err := runDaemonCmd(ctx, cephArgs, v.dir+".log", "rbd-fuse", "-c", b.env.cephConf, "-p", "volumes", "-r", v.image, v.dir); err != nil {
		return err
	}
	// rbd-fuse returns once mounted; the image file is then there.
	file := filepath.Join(v.dir, v.image)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if st, err := os.Stat(file); err == nil && st.Mode().IsRegular() {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear", file)
		}
	}
	dev, err := runCmd(ctx, nil, "losetup", "--find", "--show", file)
	if err != nil {
		return err
	}
	v.dev = dev
	if _, err := runCmd(ctx, nil, "mkfs.ext4", "-q", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1", dev); err != nil {
		return err
	}
	if _, err := runCmd(ctx, nil, "mount", dev, v.stage); err != nil {
		return err
	}
	v.mounted = true
	_, err = runCmd(ctx, nil, "mount", "--bind", v.stage, v.target)
	return err
}

func (b *bench) shellTeardown(ctx context.Context, v *nodeVol) error {
	var errs []error
	for _, p := range []string{v.target, v.stage} {
		if mapper.IsMountPoint(p) {
			if _, err := runCmd(ctx, nil, "umount", p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) == 0 {
		v.mounted = false
	}
	if v.dev != "" {
		if _, err := runCmd(ctx, nil, "losetup", "-d", v.dev); err != nil {
			errs = append(errs, err)
		} else {
			v.dev = ""
		}
	}
	if mapper.IsMountPoint(v.dir) {
		if _, err := runCmd(ctx, nil, "fusermount", "-u", v.dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// runDaemonCmd runs a command that daemonises (rbd-fuse): its output goes
// to a file, since the daemon would hold a pipe open, and it gets its own
// session, like the driver's rbd-fuse.
func runDaemonCmd(ctx context.Context, env []string, logPath, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := execCommand(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, tail(readFile(logPath), 5))
	}
	return nil
}

// rbdFuseFor lists the rbd-fuse processes whose mount point is dir.
func rbdFuseFor(dir string) []int {
	return mapper.RBDFusePIDs(func(mnt string) bool { return mnt == dir })
}

// rbdFuseUnder lists the rbd-fuse processes with a mount point below dir.
func rbdFuseUnder(dir string) []int {
	return mapper.RBDFusePIDs(func(mnt string) bool { return strings.HasPrefix(mnt, dir+"/") })
}

// waitRBDFuseGone waits for the baseline's rbd-fuse to exit after its
// unmount (untimed: its watch must be gone before the image is removed),
// and ends it (ours, by PID) if it does not.
func waitRBDFuseGone(ctx context.Context, dir string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		pids := rbdFuseFor(dir)
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			for _, p := range pids {
				_ = syscall.Kill(p, syscall.SIGTERM)
			}
			return fmt.Errorf("rbd-fuse for %s (pids %v) did not exit within %v; sent SIGTERM", dir, pids, d)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
