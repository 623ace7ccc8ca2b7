package flow

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"reflect"
	"testing"
)

func TestRunRevertsInReverse(t *testing.T) {
	var trail []string
	step := func(name string, fail bool) Step {
		return Step{
			Name: name,
			Do: func(context.Context) error {
				trail = append(trail, "do "+name)
				if fail {
					return errors.New("boom")
				}
				return nil
			},
			Undo: func(context.Context) error { trail = append(trail, "undo "+name); return nil },
		}
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	err := Run(context.Background(), log, step("a", false), step("b", false), step("c", true), step("d", false))
	var fe *Error
	if !errors.As(err, &fe) || fe.Step != "c" || fe.Err.Error() != "boom" {
		t.Fatalf("err = %v", err)
	}
	want := []string{"do a", "do b", "do c", "undo c", "undo b", "undo a"}
	if !reflect.DeepEqual(trail, want) {
		t.Fatalf("trail = %v, want %v", trail, want)
	}

	trail = nil
	if err := Run(context.Background(), log, step("a", false), step("b", false)); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(trail, []string{"do a", "do b"}) {
		t.Fatalf("trail = %v", trail)
	}
}

func TestUndoErrorsReported(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	err := Run(context.Background(), log,
		Step{Name: "a", Do: func(context.Context) error { return nil }, Undo: func(context.Context) error { return errors.New("stuck") }},
		Step{Name: "b", Do: func(context.Context) error { return errors.New("boom") }},
	)
	var fe *Error
	if !errors.As(err, &fe) || len(fe.UndoErrors) != 1 {
		t.Fatalf("err = %v", err)
	}
	if got := err.Error(); got != "b: boom (and reverting failed: undo a: stuck)" {
		t.Fatalf("message = %q", got)
	}
}

func TestCancelledContextStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	ran := false
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	err := Run(ctx, log,
		Step{Name: "a", Do: func(context.Context) error { cancel(); return nil }},
		Step{Name: "b", Do: func(context.Context) error { ran = true; return nil }},
	)
	if ran || !errors.Is(err, context.Canceled) {
		t.Fatalf("ran=%v err=%v", ran, err)
	}
}
