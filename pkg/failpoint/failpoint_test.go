package failpoint

import (
	"errors"
	"testing"
	"time"
)

func TestParseAndActions(t *testing.T) {
	m := parse(" create/clone image=kill , ceph/finish-open=error,bad, =x")
	if len(m) != 2 || m["create/clone image"] != "kill" || m["ceph/finish-open"] != "error" {
		t.Fatalf("parse: %v", m)
	}
	if len(parse("")) != 0 {
		t.Fatal("empty spec armed something")
	}
	killed, slept := false, time.Duration(0)
	k, s := func() { killed = true }, func(d time.Duration) { slept = d }
	if err := do("p", "", k, s); err != nil || killed || slept != 0 {
		t.Fatalf("unarmed point acted: %v %v %v", err, killed, slept)
	}
	if err := do("p", "error", k, s); !errors.Is(err, ErrInjected) || killed {
		t.Fatalf("error action: %v", err)
	}
	if _ = do("p", "kill", k, s); !killed {
		t.Fatal("kill action did not kill")
	}
	killed, slept = false, 0
	if err := do("p", "hang", k, s); slept != time.Hour || !errors.Is(err, ErrInjected) || killed {
		t.Fatalf("hang action: %v %v", err, slept)
	}
	if Hit("anything") != nil {
		t.Fatal("Hit acted with no BASALT_FAILPOINTS")
	}
}
