package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"text/tabwriter"
	"time"

	"github.com/basalt-csi/basalt/pkg/backend"
	"github.com/basalt-csi/basalt/pkg/config"
	"github.com/basalt-csi/basalt/pkg/locks"
	"github.com/basalt-csi/basalt/pkg/provision"
	"github.com/basalt-csi/basalt/pkg/records"
)

// images implements `basalt-csi images` (list the image-volume cache) and
// `basalt-csi images warm --image pool/name@snap [--backend B]` (fill it
// ahead of the first create, as that create would).
func images(args []string, out io.Writer) error {
	warm := len(args) > 0 && args[0] == "warm"
	if warm {
		args = args[1:]
	}
	fs := flag.NewFlagSet("basalt-csi images", flag.ContinueOnError)
	cfgPath := fs.String("config", "/etc/basalt/config.yaml", "backend configuration (YAML)")
	format := fs.String("o", "table", "output: table or json")
	image := fs.String("image", "", "with warm: the golden image, pool/name@snap")
	bname := fs.String("backend", "", "with warm: only this backend (default: every backend with imageCache.enabled)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *format != "table" && *format != "json" {
		return fmt.Errorf("-o must be table or json, not %q", *format)
	}
	var spec backend.ImageSpec
	if warm {
		var err error
		if spec, err = backend.ParseImageSpec(*image); err != nil {
			return fmt.Errorf("--image: %w", err)
		}
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	timeout := provision.CacheFillTimeout
	if !warm {
		timeout = 4 * time.Duration(cfg.CephTimeoutSeconds) * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	mgr := newManager(cfg, log)
	mgr.NoCapacity = true
	defer mgr.Close()
	mgr.Refresh(ctx)
	prov := &provision.Provisioner{Backends: mgr, Log: log, Locks: locks.New()}
	var entries []records.CacheEntry
	var retired []records.RetiredCacheImage
	if warm {
		entries, err = prov.WarmCache(ctx, spec, *bname)
	} else {
		entries, retired, err = prov.CacheEntries(ctx)
	}
	if err != nil {
		return err
	}
	if *format == "json" {
		if entries == nil {
			entries = []records.CacheEntry{}
		}
		if retired == nil {
			retired = []records.RetiredCacheImage{}
		}
		return writeJSON(out, map[string]any{"entries": entries, "retired": retired})
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BACKEND\tCACHE IMAGE\tSOURCE\tSIZE (MiB)\tHITS\tLAST USED\tCREATED")
	for _, e := range entries {
		fmt.Fprintf(tw, "%s\t%s/%s\t%s\t%d\t%d\t%s ago\t%s\n", e.Backend, e.Pool, e.Image, e.Source, e.SizeBytes>>20, e.Hits,
			time.Since(e.LastUsed).Round(time.Second), e.Created.Format(time.RFC3339))
	}
	for _, r := range retired {
		fmt.Fprintf(tw, "%s\t%s\t(evicted %s; kept until its last clone is gone)\t\t\t\t\n", r.Backend, r.Image, r.Retired.Format(time.RFC3339))
	}
	return tw.Flush()
}
