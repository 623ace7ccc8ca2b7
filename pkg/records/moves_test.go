package records

import "testing"

// A move is usable only past its switch: before, only the mover knows which
// copy counts; after, clients go where it moved to.
func TestMoveCurrent(t *testing.T) {
	to := Location{Backend: "b", FSID: "f", PoolID: 7}
	for state, usable := range map[string]bool{MoveStarted: false, MoveSwitched: true, MoveDone: true} {
		loc, ok := Move{State: state, From: Location{Backend: "a"}, To: to}.Current()
		if ok != usable || (ok && loc != to) {
			t.Errorf("%s: Current() = %+v, %v", state, loc, ok)
		}
	}
}
