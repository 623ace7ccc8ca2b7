package node

import (
	"context"
	"errors"
	"io"
	"os"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Stats reports bytes and inodes of a mounted volume, or the size of a
// block volume, at path (a target or the staging path).
func (s *Service) Stats(ctx context.Context, volumeID, path string) ([]*csi.VolumeUsage, error) {
	id, err := parseID(volumeID)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil, status.Errorf(codes.NotFound, "path %s does not exist", path)
	}
	rec, err := s.Store.Load(id.UUID)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if rec == nil {
		return nil, status.Errorf(codes.NotFound, "volume %s is not staged on this node", volumeID)
	}
	if rec.Block {
		size, err := deviceSize(rec.Mapping.Device)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "sizing %s: %v", rec.Mapping.Device, err)
		}
		return []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: size}}, nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return nil, status.Errorf(codes.Internal, "statfs %s: %v", path, err)
	}
	bs := int64(st.Bsize)
	return []*csi.VolumeUsage{
		{Unit: csi.VolumeUsage_BYTES, Total: int64(st.Blocks) * bs, Available: int64(st.Bavail) * bs, Used: int64(st.Blocks-st.Bfree) * bs},
		{Unit: csi.VolumeUsage_INODES, Total: int64(st.Files), Available: int64(st.Ffree), Used: int64(st.Files - st.Ffree)},
	}, nil
}

func deviceSize(dev string) (int64, error) {
	f, err := os.Open(dev)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return f.Seek(0, io.SeekEnd)
}

// Health reports a volume INACCESSIBLE when its mapping or mount is broken
// (CSI 1.13's NodeGetVolumeHealth, which replaced volume_condition).
func (s *Service) Health(ctx context.Context, volumeID, path string) (*csi.VolumeHealth, error) {
	id, err := parseID(volumeID)
	if err != nil {
		return nil, err
	}
	rec, err := s.Store.Load(id.UUID)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if rec == nil {
		return nil, status.Errorf(codes.NotFound, "volume %s is not staged on this node", volumeID)
	}
	h := &csi.VolumeHealth{VolumeId: volumeID}
	bad := func(reason string) {
		h.HealthStatuses = append(h.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{
			Status: csi.VolumeHealthErrorType_INACCESSIBLE, Reason: reason,
		})
	}
	if err := s.verifyStaged(ctx, rec); err != nil {
		bad(err.Error())
	}
	if path != "" && path != rec.StagingPath {
		if mounted, err := s.Mounts.IsMounted(path); err != nil || !mounted {
			bad("target " + path + " is not mounted")
		} else if !rec.Block {
			var st unix.Statfs_t
			if err := unix.Statfs(path, &st); err != nil {
				bad("target " + path + ": " + err.Error())
			}
		}
	}
	return h, nil
}
