package node

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/basalt-csi/basalt/pkg/failpoint"
	"github.com/basalt-csi/basalt/pkg/locks"
	"github.com/basalt-csi/basalt/pkg/node/mapper"
	"github.com/basalt-csi/basalt/pkg/volumeid"
)

// Service stages, publishes and heals volumes on this node: Nova's
// connect/disconnect on the compute host, with os-brick's role played by
// the mappers.
type Service struct {
	NodeID string
	Mapper mapper.Mapper
	Mounts *Mounts
	Store  *Store
	Locks  *locks.Keyed
	Log    *slog.Logger
	Lookups
}

// Lookups are the Service's questions to Ceph, answered by the driver
// (only pkg/ceph and the mappers touch Ceph).
type Lookups struct {
	// Locate returns how to reach a volume's image (everything but ReadOnly);
	// NotFound if the volume does not exist. It returns gRPC status errors.
	Locate func(ctx context.Context, volumeID string) (mapper.Spec, error)
	// AttachedMode returns "rw" or "ro" for the attachment of the volume to
	// this node, FailedPrecondition if there is none (gRPC status errors).
	AttachedMode func(ctx context.Context, volumeID, nodeID string) (string, error)
	// Clients lists the addresses of the Ceph clients on this host (the
	// node plugin's own IP) that have the volume's image open (watch it).
	Clients func(ctx context.Context, volumeID string) ([]string, error)
	// Fence blocklists the Ceph client at addr in the volume's cluster.
	Fence func(ctx context.Context, volumeID, addr string) error
}

// StageRequest is a validated NodeStageVolume.
type StageRequest struct {
	VolumeID, StagingPath string
	Block                 bool
	FsType                string
	MountFlags            []string
}

// LockWait bounds how long a node call waits for another on the same volume.
var LockWait = 60 * time.Second

func (s *Service) lock(ctx context.Context, id string) (func(), error) {
	lctx, cancel := context.WithTimeout(ctx, LockWait)
	defer cancel()
	unlock, err := s.Locks.Lock(lctx, "stage "+id)
	if err != nil {
		return nil, status.Errorf(codes.Aborted, "another operation on volume %s is still in progress; retry later", id)
	}
	return unlock, nil
}

// begin parses a volume ID and takes the volume's lock: how every call that
// changes a volume on this node starts.
func (s *Service) begin(ctx context.Context, volumeID string) (volumeid.ID, func(), error) {
	id, err := parseID(volumeID)
	if err != nil {
		return id, nil, err
	}
	unlock, err := s.lock(ctx, volumeID)
	return id, unlock, err
}

func parseID(volumeID string) (volumeid.ID, error) {
	id, err := volumeid.Parse(volumeID)
	if err != nil {
		return id, status.Errorf(codes.NotFound, "volume %q does not exist (not a Basalt volume ID)", volumeID)
	}
	return id, nil
}

// Stage maps the volume and, for a mount volume, formats it if blank,
// mounts it at the staging path and grows its filesystem to the volume.
func (s *Service) Stage(ctx context.Context, req StageRequest) error {
	id, unlock, err := s.begin(ctx, req.VolumeID)
	if err != nil {
		return err
	}
	defer unlock()
	log := s.Log.With("volume", req.VolumeID, "staging", req.StagingPath)

	rec, err := s.Store.Load(id.UUID)
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	if rec != nil {
		if rec.StagingPath != req.StagingPath {
			return status.Errorf(codes.FailedPrecondition, "volume %s is already staged at %s on this node", req.VolumeID, rec.StagingPath)
		}
		if rec.Block != req.Block || (!req.Block && rec.FsType != fsOrDefault(req.FsType)) {
			return status.Errorf(codes.AlreadyExists, "volume %s is already staged at %s with another access type or filesystem", req.VolumeID, req.StagingPath)
		}
		err := s.verifyStaged(ctx, rec)
		if err == nil {
			return nil // idempotent
		}
		if !errors.Is(err, mapper.ErrGone) {
			return status.Errorf(codes.Unavailable, "cannot check the staged volume %s (%v); retry", req.VolumeID, err)
		}
		log.Warn("staged volume is broken; staging it again in place", "reason", err)
		return s.heal(ctx, id.UUID, rec)
	}

	// Two independent registry reads: at once.
	var mode string
	modeErr := make(chan error, 1)
	go func() {
		var err error
		mode, err = s.AttachedMode(ctx, req.VolumeID, s.NodeID)
		modeErr <- err
	}()
	spec, err := s.Locate(ctx, req.VolumeID)
	if merr := <-modeErr; err == nil {
		err = merr
	}
	if err != nil {
		return err
	}
	spec.ReadOnly = mode == "ro"
	spec.Cookie = id.UUID
	rec = &Record{
		VolumeID: req.VolumeID, StagingPath: req.StagingPath, Block: req.Block,
		MountFlags: req.MountFlags, ReadOnly: spec.ReadOnly, Spec: spec, Staged: time.Now().UTC(),
	}
	if !req.Block {
		rec.FsType = fsOrDefault(req.FsType)
	}
	if err := s.stage(ctx, log, id.UUID, rec); err != nil {
		return err
	}
	log.Info("volume staged", "device", rec.Mapping.Device, "mapper", rec.Mapping.Mapper, "readOnly", rec.ReadOnly, "block", rec.Block)
	return nil
}

func fsOrDefault(fs string) string {
	if fs == "" {
		return "ext4"
	}
	return fs
}

// stage maps and mounts rec, reverting on failure; rec.Mapping is filled in.
func (s *Service) stage(ctx context.Context, log *slog.Logger, uuid string, rec *Record) (err error) {
	// Record the intent before mapping: a SIGKILL or a timeout inside Map
	// must leave a record that Unstage (or healing) finds, not a device and
	// an image watcher nobody knows (which would block DeleteVolume).
	if err := s.Store.Save(uuid, rec); err != nil {
		return status.Errorf(codes.Internal, "saving the staging record: %v", err)
	}
	m, client, err := s.mapTracked(ctx, rec.VolumeID, rec.Spec, "")
	if err == nil {
		err = failpoint.Hit("node/after-map")
	}
	if err != nil {
		// Map may have done part of its work (rbd-fuse mounted, no loop
		// device yet, or the request cancelled in between): undo that too.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), CommandTimeout)
		defer cancel()
		// No device is known: every mapper then finds the image's mappings.
		if uerr := s.Mapper.Unmap(uctx, rec.Spec, mapper.Mapping{Mapper: s.Mapper.Name(), Device: m.Device}); uerr != nil {
			log.Error("revert of a failed map failed; the staging record is kept for Unstage", "error", uerr)
			return status.Errorf(codes.Internal, "mapping %s/%s with %s: %v (and undoing it failed: %v)", rec.Spec.Pool, rec.Spec.Image, s.Mapper.Name(), err, uerr)
		}
		_ = s.Store.Delete(uuid)
		return status.Errorf(codes.Internal, "mapping %s/%s with %s: %v", rec.Spec.Pool, rec.Spec.Image, s.Mapper.Name(), err)
	}
	// The filesystem probe (a read-only blkid, tens of milliseconds through
	// rbd-fuse) runs while the daemon's client address is looked up.
	var pr *probe
	if !rec.Block && !rec.ReadOnly {
		pr = s.startProbe(ctx, m.Device)
	}
	m.Client = client()
	rec.Mapping = m
	defer func() {
		if err == nil {
			return
		}
		if pr != nil {
			pr.wait() // nothing may read the device while it is unmapped
		}
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), CommandTimeout)
		defer cancel()
		if !rec.Block {
			if uerr := s.Mounts.Unmount(uctx, rec.StagingPath); uerr != nil {
				log.Error("revert: unmount failed", "error", uerr)
			}
		}
		if uerr := s.Mapper.Unmap(uctx, rec.Spec, m); uerr != nil {
			log.Error("revert: unmap failed", "error", uerr)
		}
		_ = s.Store.Delete(uuid)
	}()
	// Record the mapping before mounting, so a crash in between is healed or
	// cleaned up from the record.
	if err := s.Store.Save(uuid, rec); err != nil {
		return status.Errorf(codes.Internal, "saving the staging record: %v", err)
	}
	if rec.Block {
		return nil
	}
	return s.mountStaging(ctx, log, rec, pr)
}

// probe is a filesystem probe of a device running in the background.
type probe struct {
	done   chan struct{}
	format string
	err    error
}

func (s *Service) startProbe(ctx context.Context, dev string) *probe {
	p := &probe{done: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.format, p.err = s.Mounts.DiskFormat(ctx, dev)
	}()
	return p
}

// wait returns the probe's outcome; it may be called more than once.
func (p *probe) wait() (string, error) {
	<-p.done
	return p.format, p.err
}

// mountStaging mounts rec's device at its staging path; pr is a probe of
// the device already started (nil: it probes itself, when it needs to).
func (s *Service) mountStaging(ctx context.Context, log *slog.Logger, rec *Record, pr *probe) error {
	if err := os.MkdirAll(rec.StagingPath, 0o750); err != nil {
		return status.Errorf(codes.Internal, "creating %s: %v", rec.StagingPath, err)
	}
	opts := append([]string(nil), rec.MountFlags...)
	if rec.FsType == "xfs" {
		// A clone or a restore carries its source's XFS UUID, and XFS
		// refuses a second filesystem with a mounted one's UUID.
		opts = append(opts, "nouuid")
	}
	if rec.ReadOnly {
		opts = append(opts, "ro")
		switch rec.FsType {
		case "ext4":
			opts = append(opts, "noload") // no journal replay on a read-only device
		case "xfs":
			opts = append(opts, "norecovery") // nor log recovery
		}
	}
	// A volume cloned from a small golden image, or grown since its
	// filesystem was (offline, or where ext4 could not grow online), is
	// larger than its filesystem: grow ext4 before mounting, while nothing
	// uses the device. Every stage checks: neither the volume_context nor
	// the publish context (Kubernetes keeps an attachment across an
	// expansion) tells reliably that a blank volume was not grown since.
	mount := s.Mounts.FormatAndMount
	if !rec.ReadOnly {
		if pr == nil {
			pr = s.startProbe(ctx, rec.Mapping.Device)
		}
		format, err := pr.wait()
		if err != nil {
			return status.Errorf(codes.Internal, "probing the filesystem on %s: %v", rec.Mapping.Device, err)
		}
		if format == "" {
			// Blank: format it without FormatAndMount probing it again.
			mount = s.Mounts.FormatBlankAndMount
		}
		grew, err := s.Mounts.GrowExt4Offline(ctx, rec.Mapping.Device, format)
		if err != nil {
			return status.Errorf(codes.Internal, "growing the filesystem on %s: %v", rec.Mapping.Device, err)
		}
		if grew {
			log.Info("filesystem grown to fill the volume", "device", rec.Mapping.Device)
		}
	}
	if err := mount(ctx, rec.Mapping.Device, rec.StagingPath, rec.FsType, opts); err != nil {
		return status.Errorf(codes.Internal, "mounting %s (%s) at %s: %v", rec.Mapping.Device, rec.FsType, rec.StagingPath, err)
	}
	if rec.ReadOnly || rec.FsType != "xfs" {
		return nil // ext4 was grown before mounting
	}
	// xfs grows online only.
	grew, err := s.Mounts.Resize(ctx, rec.Mapping.Device, rec.StagingPath)
	if err != nil {
		return status.Errorf(codes.Internal, "growing the filesystem on %s: %v", rec.Mapping.Device, err)
	}
	if grew {
		log.Info("filesystem grown to fill the volume", "device", rec.Mapping.Device)
	}
	return nil
}

// verifyStaged checks that the mapping is alive and, for a mount volume, the
// staging path is a mount of its device.
func (s *Service) verifyStaged(ctx context.Context, rec *Record) error {
	if err := s.Mapper.Check(ctx, rec.Spec, rec.Mapping); err != nil {
		return err
	}
	if rec.Block {
		if _, err := os.Stat(rec.Mapping.Device); err != nil {
			return mapper.Gone("device %s is gone: %v", rec.Mapping.Device, err)
		}
		return nil
	}
	src, err := s.Mounts.SourceOf(rec.StagingPath)
	if err != nil {
		return err
	}
	if src != rec.Mapping.Device {
		return mapper.Gone("%s is not mounted from %s (found %q)", rec.StagingPath, rec.Mapping.Device, src)
	}
	return nil
}

// Unstage unmounts the staging path and unmaps the device. A volume that is
// not staged succeeds; one still published, or whose device is still
// mounted elsewhere, is refused.
func (s *Service) Unstage(ctx context.Context, volumeID, stagingPath string) error {
	id, unlock, err := s.begin(ctx, volumeID)
	if err != nil {
		return err
	}
	defer unlock()
	rec, err := s.Store.Load(id.UUID)
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	if rec == nil {
		// Not staged by us (or already unstaged); leave nothing mounted there.
		return toInternal(s.Mounts.Unmount(ctx, stagingPath))
	}
	if rec.StagingPath != stagingPath {
		return status.Errorf(codes.FailedPrecondition, "volume %s is staged at %s, not %s", volumeID, rec.StagingPath, stagingPath)
	}
	var published []string
	for _, t := range rec.Targets {
		if mounted, _ := s.Mounts.IsMounted(t.Path); mounted {
			published = append(published, t.Path)
		}
	}
	if len(published) > 0 {
		return status.Errorf(codes.FailedPrecondition, "volume %s is still published at %s; unpublish it first", volumeID, strings.Join(published, ", "))
	}
	if !rec.Block {
		if err := s.Mounts.Unmount(ctx, stagingPath); err != nil {
			return status.Errorf(codes.Internal, "unmounting %s: %v", stagingPath, err)
		}
	}
	if err := failpoint.Hit("node/after-unmount"); err != nil {
		return toInternal(err)
	}
	if dev := rec.Mapping.Device; dev != "" {
		at, err := s.Mounts.MountedAt(dev)
		if err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		if len(at) > 0 {
			return status.Errorf(codes.FailedPrecondition, "device %s of volume %s is still mounted at %s; not unmapping it", dev, volumeID, strings.Join(at, ", "))
		}
	}
	if err := s.unmap(ctx, s.Log.With("volume", volumeID), rec); err != nil {
		return status.Errorf(codes.Internal, "unmapping %s: %v", rec.Mapping.Device, err)
	}
	if err := failpoint.Hit("node/after-unmap"); err != nil {
		return toInternal(err)
	}
	if err := s.Store.Delete(id.UUID); err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	s.Log.Info("volume unstaged", "volume", volumeID, "device", rec.Mapping.Device)
	return nil
}

// asyncUnmapper is a mapper that can leave the exit of its daemon to the
// background (the fuse mapper: mapper.FUSE.UnmapAsync).
type asyncUnmapper interface {
	UnmapAsync(ctx context.Context, s mapper.Spec, m mapper.Mapping, gone func(context.Context, error)) error
}

// unmap ends rec's mapping for NodeUnstage, then releases the watch of a
// daemon that died instead of exiting (fenceDead). With an asyncUnmapper
// the request returns once the device is detached; the daemon's exit is
// awaited, and the fence check made, in the background: unstaging does
// not wait the ~50 ms rbd-fuse takes to close its image and exit.
func (s *Service) unmap(ctx context.Context, log *slog.Logger, rec *Record) error {
	if a, ok := s.Mapper.(asyncUnmapper); ok {
		return a.UnmapAsync(ctx, rec.Spec, rec.Mapping, func(ctx context.Context, err error) {
			if err != nil {
				log.Warn("the daemon of an unstaged volume did not go cleanly", "device", rec.Mapping.Device, "error", err)
			}
			s.fenceDead(ctx, log, rec)
		})
	}
	if err := s.Mapper.Unmap(ctx, rec.Spec, rec.Mapping); err != nil {
		return err
	}
	s.fenceDead(ctx, log, rec)
	return nil
}

func toInternal(err error) error {
	if err == nil {
		return nil
	}
	return status.Error(codes.Internal, err.Error())
}

// PublishRequest is a validated NodePublishVolume.
type PublishRequest struct {
	VolumeID, StagingPath, TargetPath string
	ReadOnly                          bool
	Block                             bool
	MountFlags                        []string
	// SingleWriter is SINGLE_NODE_SINGLE_WRITER: one publish on the node at a time.
	SingleWriter bool
}

// Publish bind-mounts the staged filesystem (or the block device) at the
// target path. It refuses when the staging path is not really staged, so an
// empty directory is never bound into a pod.
func (s *Service) Publish(ctx context.Context, req PublishRequest) error {
	id, unlock, err := s.begin(ctx, req.VolumeID)
	if err != nil {
		return err
	}
	defer unlock()
	rec, err := s.Store.Load(id.UUID)
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	if rec == nil || rec.StagingPath != req.StagingPath {
		return status.Errorf(codes.FailedPrecondition, "volume %s is not staged at %s on this node; NodeStageVolume first", req.VolumeID, req.StagingPath)
	}
	if rec.Block != req.Block {
		return status.Errorf(codes.InvalidArgument, "volume %s was staged as %s, not %s", req.VolumeID, accessType(rec.Block), accessType(req.Block))
	}
	if err := s.verifyStaged(ctx, rec); err != nil {
		return status.Errorf(codes.FailedPrecondition, "volume %s is not usable at %s: %v", req.VolumeID, req.StagingPath, err)
	}
	if req.SingleWriter {
		for _, t := range rec.Targets {
			if t.Path != req.TargetPath {
				return status.Errorf(codes.FailedPrecondition, "volume %s has access mode SINGLE_NODE_SINGLE_WRITER and is already published at %s", req.VolumeID, t.Path)
			}
		}
	}
	if mounted, err := s.Mounts.IsMounted(req.TargetPath); err != nil {
		return status.Error(codes.Internal, err.Error())
	} else if mounted {
		i := rec.target(req.TargetPath)
		if i >= 0 && rec.Targets[i].ReadOnly != req.ReadOnly {
			return status.Errorf(codes.AlreadyExists, "%s is already published with readonly=%v", req.TargetPath, rec.Targets[i].ReadOnly)
		}
		if i >= 0 {
			return nil // idempotent
		}
		// Bound by a publish killed before it recorded the target: record it
		// now, so unstage and healing know it; but only if it is this
		// volume's device that is mounted there.
		at, err := s.Mounts.MountedAt(rec.Mapping.Device)
		if err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		if !slices.Contains(at, filepath.Clean(req.TargetPath)) {
			return status.Errorf(codes.FailedPrecondition, "something else than volume %s is mounted at %s", req.VolumeID, req.TargetPath)
		}
	} else if err := s.bind(ctx, rec, req.TargetPath, req.ReadOnly, req.MountFlags); err != nil {
		return err
	}
	if err := failpoint.Hit("node/after-bind"); err != nil {
		return toInternal(err)
	}
	if rec.target(req.TargetPath) < 0 {
		rec.Targets = append(rec.Targets, Target{Path: req.TargetPath, ReadOnly: req.ReadOnly})
	}
	if err := s.Store.Save(id.UUID, rec); err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	s.Log.Info("volume published", "volume", req.VolumeID, "target", req.TargetPath, "readOnly", req.ReadOnly)
	return nil
}

func accessType(block bool) string {
	if block {
		return "block"
	}
	return "mount"
}

// bind makes target a bind mount of the staging mount or the device.
func (s *Service) bind(ctx context.Context, rec *Record, target string, readOnly bool, flags []string) error {
	source := rec.StagingPath
	if rec.Block {
		source = rec.Mapping.Device
		if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		f, err := os.OpenFile(target, os.O_CREATE, 0o640)
		if err != nil {
			return status.Errorf(codes.Internal, "creating %s: %v", target, err)
		}
		f.Close()
	} else if err := os.MkdirAll(target, 0o750); err != nil {
		return status.Errorf(codes.Internal, "creating %s: %v", target, err)
	}
	if err := s.Mounts.Bind(ctx, source, target, readOnly || rec.ReadOnly, flags); err != nil {
		return status.Errorf(codes.Internal, "bind-mounting %s at %s: %v", source, target, err)
	}
	return nil
}

// Unpublish unmounts and removes the target path; one already gone succeeds.
func (s *Service) Unpublish(ctx context.Context, volumeID, target string) error {
	id, unlock, err := s.begin(ctx, volumeID)
	if err != nil {
		return err
	}
	defer unlock()
	if err := s.Mounts.Unmount(ctx, target); err != nil {
		if !isCorrupted(err) {
			return status.Errorf(codes.Internal, "unmounting %s: %v", target, err)
		}
		if err := s.Mounts.UnmountLazy(ctx, target); err != nil {
			return status.Error(codes.Internal, err.Error())
		}
	}
	if err := failpoint.Hit("node/after-unbind"); err != nil {
		return toInternal(err)
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		return status.Errorf(codes.Internal, "removing %s: %v", target, err)
	}
	rec, err := s.Store.Load(id.UUID)
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	if rec != nil {
		if i := rec.target(target); i >= 0 {
			rec.Targets = append(rec.Targets[:i], rec.Targets[i+1:]...)
			if err := s.Store.Save(id.UUID, rec); err != nil {
				return status.Error(codes.Internal, err.Error())
			}
		}
	}
	s.Log.Info("volume unpublished", "volume", volumeID, "target", target)
	return nil
}
