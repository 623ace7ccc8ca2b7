package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/basalt-csi/basalt/pkg/node/mapper"
)

// Record is what NodeStageVolume did for one volume: enough for unstage,
// publish and restart healing to need nothing else. It is kept in the node's
// state directory rather than inside the staging path, because a filesystem
// mounted there hides the path's contents, and because healing must find
// every staged volume at start without knowing the CO's directory layout.
type Record struct {
	VolumeID    string         `json:"volumeID"`
	StagingPath string         `json:"stagingPath"`
	Block       bool           `json:"block"`
	FsType      string         `json:"fsType,omitempty"`
	MountFlags  []string       `json:"mountFlags,omitempty"`
	ReadOnly    bool           `json:"readOnly"`
	Spec        mapper.Spec    `json:"spec"`
	Mapping     mapper.Mapping `json:"mapping"`
	Targets     []Target       `json:"targets,omitempty"`
	Staged      time.Time      `json:"staged"`
}

// Target is one NodePublishVolume of the record's volume.
type Target struct {
	Path     string `json:"path"`
	ReadOnly bool   `json:"readOnly"`
}

// Store keeps records as JSON files, one per volume, written atomically.
type Store struct{ Dir string }

func (s *Store) path(uuid string) string { return filepath.Join(s.Dir, uuid+".json") }

// Load returns the record of a volume, or nil if it is not staged.
func (s *Store) Load(uuid string) (*Record, error) {
	data, err := os.ReadFile(s.path(uuid))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r Record
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("staging record %s is corrupt: %w", s.path(uuid), err)
	}
	return &r, nil
}

// Save writes r for volume uuid (write to a temporary file, then rename).
func (s *Store) Save(uuid string, r *Record) error {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return err
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := s.path(uuid) + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, s.path(uuid))
}

// Delete removes the record of uuid; absent is success.
func (s *Store) Delete(uuid string) error {
	if err := os.Remove(s.path(uuid)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Count returns how many volumes have a record (are staged), without
// reading the records.
func (s *Store) Count() (int, error) {
	entries, err := os.ReadDir(s.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	n := 0
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".json") {
			n++
		}
	}
	return n, err
}

// All returns every record, keyed by volume UUID.
func (s *Store) All() (map[string]*Record, error) {
	entries, err := os.ReadDir(s.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := map[string]*Record{}
	for _, e := range entries {
		uuid, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok {
			continue
		}
		r, err := s.Load(uuid)
		if err != nil {
			return nil, err
		}
		if r != nil {
			out[uuid] = r
		}
	}
	return out, nil
}

func (r *Record) target(path string) int {
	for i, t := range r.Targets {
		if t.Path == path {
			return i
		}
	}
	return -1
}
