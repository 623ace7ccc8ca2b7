package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/basalt-csi/basalt/pkg/node/mapper"
	"github.com/basalt-csi/basalt/pkg/volumeid"
)

// Finding is one thing on this node that no staging record accounts for.
type Finding struct {
	Kind     string `json:"kind"`   // orphan-mapping, dead-mapping, orphan-key-file
	Object   string `json:"object"` // pool/image, volume ID or file
	Detail   string `json:"detail"`
	Repaired bool   `json:"repaired"`
}

// keyFileGrace: a krbd key file lives for one rbd command; one older than
// this was left by a plugin killed during that command.
const keyFileGrace = 10 * time.Minute

// Check is the node's half of `basalt-csi check`: every mapping of a Basalt
// image is one a staging record accounts for, every record's mapping is
// alive, and no key file outlived its command. With repair, orphan
// mappings that nothing mounts are unmapped and stale key files removed; a
// dead mapping is only reported (restarting the plugin heals it, or the
// CO's unstage removes it).
//
// Reporting may run beside a live plugin: mappings are listed before
// records are read, and a stage writes its record before it maps while an
// unstage unmaps before it removes its record, so a mapping listed first
// always has its record unless nothing accounts for it. Repair re-reads
// the records right before each unmap, but a stage that begins in between
// could still reuse the mapping it removes: repair with the plugin idle.
func (s *Service) Check(ctx context.Context, repair bool, keyDir string) ([]Finding, error) {
	mapped, err := s.Mapper.List(ctx)
	if err != nil {
		return nil, err
	}
	recs, err := s.Store.All()
	if err != nil {
		return nil, err
	}
	recorded := map[string]bool{}
	var out []Finding
	for _, rec := range recs {
		recorded[rec.Spec.Pool+"/"+rec.Spec.Image] = true
		if err := s.Mapper.Check(ctx, rec.Spec, rec.Mapping); errors.Is(err, mapper.ErrGone) {
			out = append(out, Finding{Kind: "dead-mapping", Object: rec.VolumeID,
				Detail: fmt.Sprintf("staged at %s, but %v; restarting the node plugin heals it", rec.StagingPath, err)})
		}
	}
	for _, m := range mapped {
		name := m.Spec.Pool + "/" + m.Spec.Image
		if !strings.HasPrefix(m.Spec.Image, volumeid.ImagePrefix) || recorded[name] {
			continue
		}
		f := Finding{Kind: "orphan-mapping", Object: name, Detail: fmt.Sprintf("mapped by %s at %s (%s), but no staging record accounts for it", m.Mapping.Mapper, m.Mapping.Device, m.Mapping.Dir)}
		if repair {
			f.Repaired, f.Detail = s.unmapOrphan(ctx, m, f.Detail)
		}
		out = append(out, f)
	}
	keys, _ := filepath.Glob(filepath.Join(keyDir, "*"))
	for _, k := range keys {
		st, err := os.Stat(k)
		if keyDir == "" || err != nil || time.Since(st.ModTime()) < keyFileGrace {
			continue
		}
		f := Finding{Kind: "orphan-key-file", Object: k, Detail: "a cephx key file no rbd command uses any more"}
		if repair {
			f.Repaired = os.Remove(k) == nil
		}
		out = append(out, f)
	}
	return out, nil
}

// unmapOrphan unmaps m unless a record for it appeared meanwhile (a stage
// began) or something still mounts its device.
func (s *Service) unmapOrphan(ctx context.Context, m mapper.Mapped, detail string) (bool, string) {
	recs, err := s.Store.All()
	if err != nil {
		return false, detail + "; not unmapped: " + err.Error()
	}
	for _, r := range recs {
		if r.Spec.Pool == m.Spec.Pool && r.Spec.Image == m.Spec.Image {
			return false, detail + "; not unmapped: a stage recorded it meanwhile"
		}
	}
	if m.Mapping.Device != "" {
		at, err := s.Mounts.MountedAt(m.Mapping.Device)
		if err != nil {
			return false, detail + "; not unmapped: " + err.Error()
		}
		if len(at) > 0 {
			return false, detail + "; not unmapped: still mounted at " + strings.Join(at, ", ")
		}
	}
	if err := s.Mapper.Unmap(ctx, m.Spec, m.Mapping); err != nil {
		return false, detail + "; not unmapped: " + err.Error()
	}
	return true, detail
}
