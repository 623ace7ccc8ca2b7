package node

import (
	"context"
	"errors"
	"os"

	"github.com/basalt-csi/basalt/pkg/metrics"
	"github.com/basalt-csi/basalt/pkg/node/mapper"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// HealAll runs when the node plugin starts: for every volume it staged
// before, it checks that the mapping is alive and, if not (an rbd-nbd or
// rbd-fuse process died with the old plugin, a krbd mapping vanished with a
// reboot), maps it again and re-mounts the staging and target paths in
// place, so pods keep their paths. It returns how many volumes it healed.
func (s *Service) HealAll(ctx context.Context) (healed int, failed int) {
	recs, err := s.Store.All()
	if err != nil {
		s.Log.Error("cannot read staging records; nothing healed", "error", err)
		return 0, 0
	}
	for uuid, rec := range recs {
		log := s.Log.With("volume", rec.VolumeID, "staging", rec.StagingPath)
		unlock, err := s.lock(ctx, rec.VolumeID)
		if err != nil {
			failed++
			metrics.Healed(metrics.HealFailed)
			continue
		}
		err = s.verifyStaged(ctx, rec)
		switch {
		case err == nil:
			log.Info("staged volume is alive", "device", rec.Mapping.Device)
			metrics.Healed(metrics.HealAlive)
			unlock()
			continue
		case !errors.Is(err, mapper.ErrGone):
			// Could not look (a listing failed): healing would detach live
			// mounts for nothing. NodeStage's retry or the next start checks again.
			log.Warn("cannot check the staged volume; leaving it as it is", "reason", err)
			failed++
			metrics.Healed(metrics.HealFailed)
			unlock()
			continue
		}
		if why := s.unwanted(ctx, rec); why != "" {
			// The CO has moved on: do not resurrect it, clean it up.
			log.Info("staged volume is no longer wanted; tearing it down instead of healing it", "reason", why)
			if err := s.teardown(ctx, uuid, rec); err != nil {
				log.Error("could not tear down the unwanted volume", "error", err)
				failed++
				metrics.Healed(metrics.HealFailed)
			} else {
				metrics.Healed(metrics.HealTornDown)
			}
			unlock()
			continue
		}
		log.Warn("staged volume is broken; re-mapping it", "reason", err)
		if err := s.heal(ctx, uuid, rec); err != nil {
			log.Error("could not heal the staged volume", "error", err)
			failed++
		} else {
			healed++
		}
		unlock()
	}
	return healed, failed
}

// unwanted tells why the CO no longer wants a staged volume ("" if it still
// may): its staging directory was removed, or the volume is no longer
// published to this node (no attachment record). When the registry cannot be
// asked, the volume is assumed wanted: pods may depend on it.
func (s *Service) unwanted(ctx context.Context, rec *Record) string {
	if _, err := os.Stat(rec.StagingPath); errors.Is(err, os.ErrNotExist) {
		return "its staging path " + rec.StagingPath + " was removed"
	}
	_, err := s.AttachedMode(ctx, rec.VolumeID, s.NodeID)
	switch status.Code(err) {
	case codes.NotFound:
		return "the volume no longer exists"
	case codes.FailedPrecondition:
		return "it is no longer published to this node"
	}
	return ""
}

// teardown undoes a stage the CO no longer wants: targets and staging
// unmounted (lazily: the device may be dead), the image unmapped, the record
// removed. The caller holds the volume's lock.
func (s *Service) teardown(ctx context.Context, uuid string, rec *Record) error {
	paths := []string{}
	for _, t := range rec.Targets {
		paths = append(paths, t.Path)
	}
	if !rec.Block {
		paths = append(paths, rec.StagingPath)
	}
	for _, p := range paths {
		if mounted, _ := s.Mounts.IsMounted(p); mounted {
			if err := s.Mounts.UnmountLazy(ctx, p); err != nil {
				return err
			}
		}
	}
	if err := s.Mapper.Unmap(ctx, rec.Spec, rec.Mapping); err != nil {
		return err
	}
	s.fenceDead(ctx, s.Log.With("volume", rec.VolumeID), rec)
	return s.Store.Delete(uuid)
}

// heal re-establishes rec in place: the caller holds the volume's lock.
func (s *Service) heal(ctx context.Context, uuid string, rec *Record) (err error) {
	defer func() {
		if err != nil {
			metrics.Healed(metrics.HealFailed)
		} else {
			metrics.Healed(metrics.HealHealed)
		}
	}()
	log := s.Log.With("volume", rec.VolumeID, "staging", rec.StagingPath)
	// rbd-nbd can re-attach a new daemon to the same device (by cookie): the
	// mounts above it then never notice.
	if r, ok := s.Mapper.(reattacher); ok {
		err := r.Reattach(ctx, rec.Spec, rec.Mapping)
		if err == nil && s.verifyStaged(ctx, rec) == nil {
			rec.Mapping.Client = "" // the new daemon's address is not known
			if err := s.Store.Save(uuid, rec); err != nil {
				return status.Error(codes.Internal, err.Error())
			}
			log.Info("staged volume healed: mapping re-attached in place", "device", rec.Mapping.Device)
			return nil
		}
		log.Warn("re-attaching failed; mapping anew", "error", err)
	}
	// Mounts over the dead device are useless and would keep it busy.
	for _, t := range rec.Targets {
		if mounted, _ := s.Mounts.IsMounted(t.Path); mounted {
			if err := s.Mounts.UnmountLazy(ctx, t.Path); err != nil {
				return status.Errorf(codes.Internal, "detaching target %s: %v", t.Path, err)
			}
		}
	}
	if !rec.Block {
		if mounted, _ := s.Mounts.IsMounted(rec.StagingPath); mounted {
			if err := s.Mounts.UnmountLazy(ctx, rec.StagingPath); err != nil {
				return status.Errorf(codes.Internal, "detaching staging %s: %v", rec.StagingPath, err)
			}
		}
	}
	old := rec.Mapping
	fenced := ""
	if err := s.Mapper.Unmap(ctx, rec.Spec, old); err != nil {
		log.Warn("could not clear the dead mapping; mapping anew anyway", "device", old.Device, "error", err)
	} else {
		fenced = s.fenceDead(ctx, log, rec)
	}
	m, client, err := s.mapTracked(ctx, rec.VolumeID, rec.Spec, fenced)
	if err != nil {
		return status.Errorf(codes.Internal, "re-mapping %s/%s: %v", rec.Spec.Pool, rec.Spec.Image, err)
	}
	m.Client = client()
	rec.Mapping = m
	if err := s.Store.Save(uuid, rec); err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	if !rec.Block {
		if err := s.mountStaging(ctx, log, rec, nil); err != nil {
			return err
		}
	}
	for _, t := range rec.Targets {
		if err := s.bind(ctx, rec, t.Path, t.ReadOnly, nil); err != nil {
			return err
		}
	}
	log.Info("staged volume healed: re-mapped and re-mounted in place",
		"oldDevice", old.Device, "device", m.Device, "targets", len(rec.Targets))
	return nil
}

type reattacher interface {
	Reattach(ctx context.Context, spec mapper.Spec, m mapper.Mapping) error
}
