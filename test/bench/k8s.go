package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// k8sPhases is one driver's figures in _output/bench-k8s.json (written by
// test/e2e/kubernetes/scale_test.go).
type k8sPhases map[string]struct {
	AllMs float64   `json:"all_ms"`
	Ms    []float64 `json:"ms"`
}

// k8s runs `make bench-k8s` (its own stack: the e2e's Kubernetes and Ceph)
// and adds its figures as rows, Basalt's beside the control's as baseline:
// nullcsi, a driver doing no storage work with Basalt's sidecars and flags.
// A row's latencies are each object's time from the batch's apply; its
// wall time is until the last one.
func (b *bench) k8s(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, "make", "bench-k8s")
	cmd.Dir, cmd.Stdout, cmd.Stderr = b.o.root, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("make bench-k8s: %w", err)
	}
	data, err := os.ReadFile(filepath.Join(b.o.root, "_output", "bench-k8s.json"))
	if err != nil {
		return err
	}
	var res struct {
		N       int       `json:"pvcs"`
		Pods    int       `json:"pods"`
		Control k8sPhases `json:"control"`
		Basalt  k8sPhases `json:"basalt"`
	}
	if err := json.Unmarshal(data, &res); err != nil {
		return fmt.Errorf("bench-k8s.json: %w", err)
	}
	for _, p := range []struct {
		key, op string
		n       int
	}{
		{"bound", "Kubernetes: PVCs Bound", res.N},
		{"attached", "Kubernetes: VolumeAttachments attached", res.Pods},
		{"running", "Kubernetes: pods Running", res.Pods},
	} {
		if p.n == 0 {
			continue
		}
		for _, d := range []struct {
			impl, note string
			ph         k8sPhases
		}{
			{implBasalt, "from the golden image, Immediate binding, all at once", res.Basalt},
			{implBaseline, "control: nullcsi (no storage work), Basalt's sidecars and flags", res.Control},
		} {
			ph := d.ph[p.key]
			bt := &batch{n: p.n, conc: p.n, errs: p.n - len(ph.Ms), wall: time.Duration(ph.AllMs * float64(time.Millisecond))}
			for _, v := range ph.Ms {
				bt.lat = append(bt.lat, time.Duration(v*float64(time.Millisecond)))
			}
			b.addRow(p.op, d.impl, true, bt, d.note)
		}
	}
	return nil
}
