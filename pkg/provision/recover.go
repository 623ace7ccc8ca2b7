package provision

import (
	"context"
	"errors"
	"time"

	"github.com/basalt-csi/basalt/pkg/records"
)

// Recover finds creates that were interrupted (the controller died between
// reserving a name and marking the volume ready) and undoes them: the image
// on the backend, the index entry and the reservation. A CO that still wants
// the volume retries CreateVolume and gets a fresh one. Reservations younger
// than grace are left alone, in case another controller is working on them;
// names whose lock is held in this process are being worked on and skipped.
func (p *Provisioner) Recover(ctx context.Context, grace time.Duration) (undone int, err error) {
	reg, err := p.registry()
	if err != nil {
		return 0, err
	}
	names, err := reg.Pending(ctx, 1000)
	if err != nil {
		return 0, classify(err, "listing pending creates")
	}
	for _, name := range names {
		lctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		unlock, lerr := p.Locks.Lock(lctx, LockName(name))
		cancel()
		if lerr != nil {
			continue
		}
		did, err := p.recoverOne(ctx, reg, name, grace)
		unlock()
		if err != nil {
			p.Log.Error("could not undo an interrupted create; will retry", "name", name, "error", err)
			continue
		}
		if did {
			undone++
		}
	}
	return undone, nil
}

func (p *Provisioner) recoverOne(ctx context.Context, reg *records.Registry, name string, grace time.Duration) (bool, error) {
	res, err := reg.Reservation(ctx, name)
	switch {
	case errors.Is(err, records.ErrNotFound):
		return false, reg.Forget(ctx, name) // crashed between listing and creating
	case err != nil:
		return false, err
	case res.State == records.StateReady:
		return false, reg.Forget(ctx, name) // crashed between ready and unlisting
	case time.Since(res.Updated) < grace:
		return false, nil
	}
	p.Log.Warn("undoing an interrupted create", "name", name, "uuid", res.UUID, "backend", res.Backend, "since", res.Updated)
	if err := p.discardPartial(ctx, reg, &res); err != nil {
		return false, err
	}
	return true, reg.Release(ctx, name, res.UUID)
}

// LockName is the in-process lock key of a CreateVolume name.
func LockName(name string) string { return "name " + name }

// LockVolume is the in-process lock key of a volume ID.
func LockVolume(id string) string { return "volume " + id }
