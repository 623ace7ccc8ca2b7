// Package flow runs a sequence of steps, each with an undo, the way Cinder's
// taskflow runs create_volume: when a step fails, the steps that completed
// are reverted in reverse order so nothing half-made is left behind.
package flow

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/basalt-csi/basalt/pkg/failpoint"
)

// Step is one unit of work. Undo may be nil for steps with nothing to revert.
type Step struct {
	Name string
	Do   func(ctx context.Context) error
	Undo func(ctx context.Context) error
}

// UndoTimeout bounds each revert. Reverts run on a fresh context: the request's
// own context is often the reason the flow failed (its deadline passed).
var UndoTimeout = 60 * time.Second

// Error reports the failed step and any revert that failed too, so the operator
// knows what may have leaked.
type Error struct {
	Step       string
	Err        error
	UndoErrors []error
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("%s: %v", e.Step, e.Err)
	if len(e.UndoErrors) > 0 {
		msg += fmt.Sprintf(" (and reverting failed: %v)", errors.Join(e.UndoErrors...))
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// Run executes steps in order. On failure it reverts the completed ones and
// returns an *Error wrapping the step's error.
func Run(ctx context.Context, log *slog.Logger, steps ...Step) error {
	for i, s := range steps {
		if err := ctx.Err(); err != nil {
			return revert(log, steps[:i], &Error{Step: s.Name, Err: err})
		}
		if err := failpoint.Hit("before " + s.Name); err != nil {
			return revert(log, steps[:i], &Error{Step: s.Name, Err: err})
		}
		err := s.Do(ctx)
		if err == nil {
			err = failpoint.Hit("after " + s.Name)
		}
		if err != nil {
			// The failed step may have done part of its work; its own undo
			// must therefore be idempotent and is run as well.
			return revert(log, steps[:i+1], &Error{Step: s.Name, Err: err})
		}
	}
	return nil
}

func revert(log *slog.Logger, done []Step, fe *Error) error {
	log.Warn("step failed, reverting", "step", fe.Step, "error", fe.Err)
	for i := len(done) - 1; i >= 0; i-- {
		s := done[i]
		if s.Undo == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), UndoTimeout)
		err := s.Undo(ctx)
		cancel()
		if err != nil {
			log.Error("revert failed", "step", s.Name, "error", err)
			fe.UndoErrors = append(fe.UndoErrors, fmt.Errorf("undo %s: %w", s.Name, err))
		} else {
			log.Info("reverted", "step", s.Name)
		}
	}
	return fe
}
