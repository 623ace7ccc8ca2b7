package metrics

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestCensusShowsAgesAndKeepsOldFiguresWhenAReadFails(t *testing.T) {
	now := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	fail := false
	c := &censusCollector{now: func() time.Time { return now }, read: func(ctx context.Context) (Census, error) {
		if _, ok := ctx.Deadline(); !ok {
			t.Error("the registry read has no deadline")
		}
		if fail {
			return Census{}, errors.New("registry backend down")
		}
		return Census{
			Nodes: []NodeCensus{
				{ID: "n1", Zone: "z1", LastSeen: now.Add(-20 * time.Second), Attachments: 3},
				{ID: "n2", LastSeen: now.Add(-10 * time.Minute)},
			},
			Pending:      map[string]PendingCensus{"volume": {Count: 2, Oldest: now.Add(-90 * time.Second)}},
			FlattenQueue: 4, DeletedKept: 1,
		}, nil
	}}
	want := `
# HELP basalt_node_attachments Volumes published to the node (ControllerPublish), from the node attachment index.
# TYPE basalt_node_attachments gauge
basalt_node_attachments{node="n1"} 3
basalt_node_attachments{node="n2"} 0
# HELP basalt_node_last_seen_age_seconds Seconds since the node plugin's last heartbeat (every 30 s while it runs).
# TYPE basalt_node_last_seen_age_seconds gauge
basalt_node_last_seen_age_seconds{node="n1",zone="z1"} 20
basalt_node_last_seen_age_seconds{node="n2",zone=""} 600
# HELP basalt_records_pending Creates reserved but not finished, by kind (volume, snapshot, group): in flight, or interrupted and waiting for recovery.
# TYPE basalt_records_pending gauge
basalt_records_pending{kind="group"} 0
basalt_records_pending{kind="snapshot"} 0
basalt_records_pending{kind="volume"} 2
# HELP basalt_records_pending_oldest_age_seconds Seconds since the oldest unfinished create of the kind last moved (0 when none): a create stuck past the recovery grace period shows here.
# TYPE basalt_records_pending_oldest_age_seconds gauge
basalt_records_pending_oldest_age_seconds{kind="group"} 0
basalt_records_pending_oldest_age_seconds{kind="snapshot"} 0
basalt_records_pending_oldest_age_seconds{kind="volume"} 90
# HELP basalt_flatten_queue_length Volumes whose clone chain is too deep, waiting for the background flattener.
# TYPE basalt_flatten_queue_length gauge
basalt_flatten_queue_length 4
# HELP basalt_deleted_volumes_kept Deleted volumes whose images are kept because snapshots or clones still need them.
# TYPE basalt_deleted_volumes_kept gauge
basalt_deleted_volumes_kept 1
`
	names := []string{"basalt_node_attachments", "basalt_node_last_seen_age_seconds", "basalt_records_pending",
		"basalt_records_pending_oldest_age_seconds", "basalt_flatten_queue_length", "basalt_deleted_volumes_kept"}
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	// The registry stops answering: the last figures stay, aged, and the
	// failure is counted.
	fail = true
	now = now.Add(time.Minute)
	f0 := testutil.ToFloat64(censusFailures)
	age := `
# HELP basalt_records_read_age_seconds Age of the registry figures above: 0 when this scrape read them, more when the read failed and older figures are shown.
# TYPE basalt_records_read_age_seconds gauge
basalt_records_read_age_seconds 60
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(age), "basalt_records_read_age_seconds"); err != nil {
		t.Error(err)
	}
	if d := testutil.ToFloat64(censusFailures) - f0; d != 1 {
		t.Errorf("read failures +%v, want +1", d)
	}
	if err := testutil.CollectAndCompare(c, strings.NewReader(`
# HELP basalt_flatten_queue_length Volumes whose clone chain is too deep, waiting for the background flattener.
# TYPE basalt_flatten_queue_length gauge
basalt_flatten_queue_length 4
`), "basalt_flatten_queue_length"); err != nil {
		t.Errorf("figures lost after a failed read: %v", err)
	}
}

func TestCensusWithoutAnyReadIsAnError(t *testing.T) {
	c := &censusCollector{now: time.Now, read: func(context.Context) (Census, error) { return Census{}, errors.New("down") }}
	if _, err := testutil.CollectAndLint(c); err == nil {
		t.Error("a census never read was collected without an error")
	}
}

func TestRecoveryAndFlattenCounters(t *testing.T) {
	u0 := testutil.ToFloat64(recoveryActions.WithLabelValues(RecoveryUndoCreate))
	d0 := testutil.ToFloat64(flattens.WithLabelValues("done"))
	f0 := testutil.ToFloat64(flattens.WithLabelValues("failed"))
	Recovered(RecoveryUndoCreate)
	Flattened(3*time.Second, nil)
	Flattened(time.Second, errors.New("timed out"))
	if d := testutil.ToFloat64(recoveryActions.WithLabelValues(RecoveryUndoCreate)) - u0; d != 1 {
		t.Errorf("undo_create +%v, want +1", d)
	}
	if d := testutil.ToFloat64(flattens.WithLabelValues("done")) - d0; d != 1 {
		t.Errorf("done flattens +%v, want +1", d)
	}
	if d := testutil.ToFloat64(flattens.WithLabelValues("failed")) - f0; d != 1 {
		t.Errorf("failed flattens +%v, want +1", d)
	}
}

func TestObserveCommandByBaseName(t *testing.T) {
	f0 := testutil.ToFloat64(commandFailures.WithLabelValues("mkfs.ext4"))
	t0 := testutil.ToFloat64(commandTimeouts.WithLabelValues("mkfs.ext4"))
	ObserveCommand("/sbin/mkfs.ext4", 200*time.Millisecond, false, false)
	ObserveCommand("mkfs.ext4", time.Second, true, false)
	ObserveCommand("mkfs.ext4", 2*time.Minute, true, true)
	if d := testutil.ToFloat64(commandFailures.WithLabelValues("mkfs.ext4")) - f0; d != 2 {
		t.Errorf("failures +%v, want +2 (the killed one is a failure too)", d)
	}
	if d := testutil.ToFloat64(commandTimeouts.WithLabelValues("mkfs.ext4")) - t0; d != 1 {
		t.Errorf("timeouts +%v, want +1", d)
	}
	if n := testutil.CollectAndCount(commandDuration, "basalt_node_command_duration_seconds"); n == 0 {
		t.Error("no command histogram")
	}
	for _, l := range []string{"/sbin/mkfs.ext4", "/sbin"} {
		if testutil.ToFloat64(commandFailures.WithLabelValues(l)) != 0 {
			t.Errorf("a path became a label: %q", l)
		}
	}
}

func TestStagedCollector(t *testing.T) {
	n := 2
	c := stagedCollector{"fuse", func() (int, error) { return n, nil }}
	want := `
# HELP basalt_node_staged_volumes Volumes this node plugin holds staged (mapped, with a staging record), by mapper.
# TYPE basalt_node_staged_volumes gauge
basalt_node_staged_volumes{mapper="fuse"} 2
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	h0 := testutil.ToFloat64(healActions.WithLabelValues(HealHealed))
	Healed(HealHealed)
	if d := testutil.ToFloat64(healActions.WithLabelValues(HealHealed)) - h0; d != 1 {
		t.Errorf("healed +%v, want +1", d)
	}
}
