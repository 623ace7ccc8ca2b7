package node

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/basalt-csi/basalt/pkg/node/mapper"
)

// deviceGrowWait bounds how long NodeExpandVolume waits for the mapped
// device to show the image's new size (librbd learns it from a header
// notification, the kernel from rbd-nbd or krbd).
const deviceGrowWait = 30 * time.Second

// refresher is a mapper whose device must be told that its image grew
// (fuse+loop: the loop device keeps the size it was attached with).
type refresher interface {
	Refresh(ctx context.Context, spec mapper.Spec, m mapper.Mapping, size int64) error
}

// Expand is NodeExpandVolume: the device is made to see the image's new
// size (at least required bytes), then a filesystem is grown online (xfs
// always; ext4 where the host allows it). It returns the device's size.
//
// Online ext4 growth needs CAP_SYS_RESOURCE; where the plugin lacks it,
// the volume is marked to be grown at its next stage (offline, before
// mounting, which needs no capability) and the call fails with
// FailedPrecondition saying so, so nothing claims a size the filesystem
// does not have yet.
func (s *Service) Expand(ctx context.Context, volumeID, volumePath string, required int64) (int64, error) {
	id, unlock, err := s.begin(ctx, volumeID)
	if err != nil {
		return 0, err
	}
	defer unlock()
	rec, err := s.Store.Load(id.UUID)
	if err != nil {
		return 0, status.Error(codes.Internal, err.Error())
	}
	if rec == nil {
		return 0, status.Errorf(codes.NotFound, "volume %s is not staged on this node", volumeID)
	}
	if volumePath != rec.StagingPath && rec.target(volumePath) < 0 {
		return 0, status.Errorf(codes.NotFound, "volume %s is not staged or published at %s on this node", volumeID, volumePath)
	}
	dev := rec.Mapping.Device
	if r, ok := s.Mapper.(refresher); ok {
		if err := r.Refresh(ctx, rec.Spec, rec.Mapping, required); err != nil {
			return 0, status.Errorf(codes.Unavailable, "refreshing the size of %s: %v; retry", dev, err)
		}
	}
	size, err := waitDeviceSize(ctx, dev, required&^511) // block devices count whole sectors
	if err != nil {
		return 0, status.Errorf(codes.Unavailable, "%v; retry", err)
	}
	if rec.Block || rec.ReadOnly {
		return size, nil // nothing on the device to grow
	}
	grew, err := s.Mounts.Resize(ctx, dev, rec.StagingPath)
	switch {
	case err != nil && rec.FsType == "ext4" && strings.Contains(err.Error(), "Permission denied"):
		s.Log.Warn("ext4 cannot grow online on this host (no CAP_SYS_RESOURCE); it grows at the next stage", "volume", volumeID, "device", dev)
		return 0, status.Errorf(codes.FailedPrecondition, "volume %s: the device is %d bytes now, but ext4 cannot be grown online on this host (the node plugin lacks CAP_SYS_RESOURCE); the filesystem grows when the volume is next staged (restart the pod using it)", volumeID, size)
	case err != nil:
		return 0, status.Errorf(codes.Internal, "growing the filesystem on %s: %v", dev, err)
	}
	s.Log.Info("volume expanded on the node", "volume", volumeID, "device", dev, "bytes", size, "filesystemGrown", grew)
	return size, nil
}

// waitDeviceSize waits until dev is at least want bytes and returns its size.
func waitDeviceSize(ctx context.Context, dev string, want int64) (int64, error) {
	var size int64
	err := mapper.Poll(ctx, deviceGrowWait, func() (bool, error) {
		var err error
		size, err = deviceSize(dev)
		return size >= want, err
	})
	if errors.Is(err, mapper.ErrPollTimeout) {
		return 0, fmt.Errorf("%s is still %d bytes, not %d, after %v", dev, size, want, deviceGrowWait)
	}
	return size, err
}
