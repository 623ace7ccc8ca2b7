// Package failpoint lets tests make a real basalt-csi process fail at a
// named point of a flow: SIGKILL itself, return an error, or hang. Points
// are armed only through the BASALT_FAILPOINTS environment variable, read
// once at start; unset (production), Hit is one lookup in an empty map.
//
//	BASALT_FAILPOINTS="create/clone image=kill,ceph/finish-open=error"
//
// Names are "<flow>/<step>" for every step of a flow (see pkg/flow) and a
// few named points inside pkg/ceph; actions are kill, error and hang (sleep
// for an hour: past any deadline).
package failpoint

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"
)

// ErrInjected is returned by an "error" failpoint.
var ErrInjected = errors.New("injected failure")

var armed = parse(os.Getenv("BASALT_FAILPOINTS"))

func parse(spec string) map[string]string {
	m := map[string]string{}
	for _, kv := range strings.Split(spec, ",") {
		name, action, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if ok && name != "" {
			m[name] = action
		}
	}
	return m
}

// Hit runs the action armed at name, if any.
func Hit(name string) error {
	if len(armed) == 0 {
		return nil
	}
	return do(name, armed[name], kill, time.Sleep)
}

func kill() { _ = syscall.Kill(os.Getpid(), syscall.SIGKILL) }

func do(name, action string, kill func(), sleep func(time.Duration)) error {
	switch action {
	case "":
		return nil
	case "kill":
		fmt.Fprintf(os.Stderr, "failpoint %s: SIGKILL\n", name)
		kill()
		sleep(time.Hour) // the signal is on its way
	case "hang":
		sleep(time.Hour)
	}
	return fmt.Errorf("%w at %s", ErrInjected, name)
}
