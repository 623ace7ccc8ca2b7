// Package provision is Cinder's create and delete flows for Basalt: reserve
// the name, schedule, create on the chosen backend (clone, copy or blank,
// then resize and tag), reschedule on failure, and revert every step that
// does not complete. It is pure Go over pkg/backend and pkg/records.
package provision

import "fmt"

// Kind classifies an error for the gRPC layer, which maps it to a code.
type Kind int

// Error kinds.
const (
	Internal           Kind = iota
	InvalidArgument         // the request is wrong
	NotFound                // the volume or image does not exist
	AlreadyExists           // the name is taken by an incompatible volume
	OutOfRange              // the size cannot be satisfied
	ResourceExhausted       // no backend can hold the volume
	FailedPrecondition      // the volume is in use
	Unavailable             // a backend needed for the answer is down
	DeadlineExceeded        // a Ceph call did not return in time
	Aborted                 // lost races too often; retry
)

// Error carries a Kind and an actionable message.
type Error struct {
	Kind Kind
	Msg  string
	Err  error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

func errorf(k Kind, err error, format string, args ...any) *Error {
	return &Error{Kind: k, Msg: fmt.Sprintf(format, args...), Err: err}
}
