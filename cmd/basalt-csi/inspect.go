package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/basalt-csi/basalt/pkg/ceph"
	"github.com/basalt-csi/basalt/pkg/config"
	"github.com/basalt-csi/basalt/pkg/locks"
	"github.com/basalt-csi/basalt/pkg/provision"
	"github.com/basalt-csi/basalt/pkg/records"
	"github.com/basalt-csi/basalt/pkg/volumeid"
)

// inspect implements the operator subcommands, which read the same records
// in Ceph as the driver: `attachments`, `nodes` and `snapshots`.
func inspect(cmd string, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("basalt-csi "+cmd, flag.ContinueOnError)
	cfgPath := fs.String("config", "/etc/basalt/config.yaml", "backend configuration (YAML)")
	format := fs.String("o", "table", "output: table or json")
	var volume, nodeID string
	switch cmd {
	case "attachments":
		fs.StringVar(&volume, "volume", "", "only this volume ID")
		fs.StringVar(&nodeID, "node", "", "only this node ID")
	case "snapshots":
		fs.StringVar(&volume, "volume", "", "only the snapshots of this volume ID")
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *format != "table" && *format != "json" {
		return fmt.Errorf("-o must be table or json, not %q", *format)
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	b, _ := cfg.Backend(cfg.RegistryBackend)
	timeout := time.Duration(cfg.CephTimeoutSeconds) * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 2*timeout)
	defer cancel()
	conn, err := ceph.Connect(ctx, b, timeout)
	if err != nil {
		return fmt.Errorf("registry backend: %w", err)
	}
	defer conn.Close()
	reg := records.NewRegistry(conn)

	if cmd == "nodes" {
		nodes, err := reg.Nodes(ctx)
		if err != nil {
			return err
		}
		if *format == "json" {
			return writeJSON(out, nodes)
		}
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tZONE\tMAX VOLUMES\tMAPPER\tVERSION\tREGISTERED\tLAST SEEN")
		for _, n := range nodes {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s ago\n", n.ID, n.Zone, n.MaxVolumes, n.Mapper, n.Version,
				n.Registered.Format(time.RFC3339), time.Since(n.LastSeen).Round(time.Second))
		}
		return tw.Flush()
	}

	if cmd == "snapshots" {
		return listSnapshots(ctx, reg, volume, *format, out)
	}

	var atts []records.AttachmentRecord
	if volume != "" {
		id, err := volumeid.Parse(volume)
		if err != nil {
			return err
		}
		a, err := reg.LoadAttachments(ctx, volume, id.UUID)
		if err != nil {
			return err
		}
		for _, r := range a.Items {
			if nodeID == "" || r.Node == nodeID {
				atts = append(atts, r)
			}
		}
	} else if atts, err = reg.NodeAttachments(ctx, nodeID); err != nil {
		return err
	}
	sort.Slice(atts, func(i, j int) bool {
		if atts[i].VolumeID != atts[j].VolumeID {
			return atts[i].VolumeID < atts[j].VolumeID
		}
		return atts[i].Node < atts[j].Node
	})
	if *format == "json" {
		if atts == nil {
			atts = []records.AttachmentRecord{}
		}
		return writeJSON(out, atts)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VOLUME\tNODE\tMODE\tACCESS MODE\tTYPE\tATTACHMENT\tCREATED")
	for _, r := range atts {
		typ := "mount"
		if r.Block {
			typ = "block"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.VolumeID, r.Node, r.Mode, r.AccessMode, typ, r.ID, r.Created.Format(time.RFC3339))
	}
	return tw.Flush()
}

func writeJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// listSnapshots prints the snapshot index, all of it or one volume's.
func listSnapshots(ctx context.Context, reg *records.Registry, volume, format string, out io.Writer) error {
	prefix := ""
	if volume != "" {
		id, err := volumeid.Parse(volume)
		if err != nil {
			return err
		}
		prefix = volumeid.SnapshotPrefixOf(id)
	}
	snaps := []records.SnapshotEntry{}
	for after := ""; ; {
		page, next, err := reg.Snapshots(ctx, prefix, after, 1000)
		if err != nil {
			return err
		}
		snaps = append(snaps, page...)
		if next == "" {
			break
		}
		after = next
	}
	if format == "json" {
		return writeJSON(out, snaps)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SNAPSHOT\tNAME\tSOURCE VOLUME\tBACKEND\tSIZE\tCREATED")
	for _, e := range snaps {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", e.SnapshotID, e.Name, e.SourceVolumeID, e.Backend, e.SizeBytes, e.Created.Format(time.RFC3339))
	}
	return tw.Flush()
}

// check implements `basalt-csi check [--repair]`: the invariant the tests
// check (see provision.Check), on every backend that answers. It exits
// non-zero while something is left unrepaired.
func check(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("basalt-csi check", flag.ContinueOnError)
	cfgPath := fs.String("config", "/etc/basalt/config.yaml", "backend configuration (YAML)")
	format := fs.String("o", "table", "output: table or json")
	repair := fs.Bool("repair", false, "remove what nothing accounts for (orphan images and snapshots, ghost index entries, stale creates; on a node: orphan mappings, stale key files)")
	var o options
	nodeCheck := fs.Bool("node", false, "check this node instead of Ceph: mappings, loop devices, FUSE mounts and key files against the staging records (run it where the node plugin runs)")
	fs.StringVar(&o.stateDir, "state-dir", "/var/lib/basalt", "with --node: the node plugin's --state-dir")
	fs.StringVar(&o.mapper, "mapper", "auto", "with --node: the node plugin's --mapper")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var findings []provision.Finding
	if *nodeCheck {
		svc, err := newNodeService(o, &provision.Provisioner{Log: log, Locks: locks.New()}, log)
		if err != nil {
			return err
		}
		nf, err := svc.Check(ctx, *repair, keyDir(o))
		if err != nil {
			return err
		}
		for _, f := range nf {
			findings = append(findings, provision.Finding{Backend: "node", Kind: f.Kind, Object: f.Object, Detail: f.Detail, Repaired: f.Repaired})
		}
	} else {
		cfg, err := config.Load(*cfgPath)
		if err != nil {
			return err
		}
		mgr := newManager(cfg, log)
		mgr.NoCapacity = true
		defer mgr.Close()
		mgr.Refresh(ctx)
		if down := mgr.Down(); len(down) > 0 {
			fmt.Fprintf(os.Stderr, "backends down, not checked: %v\n", down)
		}
		prov := &provision.Provisioner{Backends: mgr, Log: log, Locks: locks.New()}
		if findings, err = prov.Check(ctx, *repair, recoverGrace); err != nil {
			return err
		}
	}
	if *format == "json" {
		if findings == nil {
			findings = []provision.Finding{}
		}
		if err := writeJSON(out, findings); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "KIND\tBACKEND\tOBJECT\tREPAIRED\tDETAIL")
		for _, f := range findings {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\n", f.Kind, f.Backend, f.Object, f.Repaired, f.Detail)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	for _, f := range findings {
		if !f.Repaired {
			return fmt.Errorf("%d finding(s) left; see above", len(findings))
		}
	}
	return nil
}
