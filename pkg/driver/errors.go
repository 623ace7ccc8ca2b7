package driver

import (
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/basalt-csi/basalt/pkg/provision"
)

var kindCodes = map[provision.Kind]codes.Code{
	provision.Internal:           codes.Internal,
	provision.InvalidArgument:    codes.InvalidArgument,
	provision.NotFound:           codes.NotFound,
	provision.AlreadyExists:      codes.AlreadyExists,
	provision.OutOfRange:         codes.OutOfRange,
	provision.ResourceExhausted:  codes.ResourceExhausted,
	provision.FailedPrecondition: codes.FailedPrecondition,
	provision.Unavailable:        codes.Unavailable,
	provision.DeadlineExceeded:   codes.DeadlineExceeded,
	provision.Aborted:            codes.Aborted,
}

// toStatus maps any error to a CSI status; errors already carrying a gRPC
// code keep it.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var pe *provision.Error
	if errors.As(err, &pe) {
		return status.Error(kindCodes[pe.Kind], pe.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}
