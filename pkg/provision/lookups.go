package provision

import (
	"sync"
	"time"

	"github.com/basalt-csi/basalt/pkg/backend"
)

// imageTTL bounds how long a golden image lookup is reused. A protected
// snapshot does not change size; if it disappears meanwhile the clone fails,
// the entry is dropped and the create is rescheduled or reported.
const imageTTL = 30 * time.Second

// imageLookups remembers which clusters hold a golden image, so a burst of
// creates from one image does not open it once per volume.
type imageLookups struct {
	mu      sync.Mutex
	entries map[backend.ImageSpec]imageEntry
}

type imageEntry struct {
	fingerprints map[string]string // fsid -> the snapshot's fingerprint there
	size         uint64
	expires      time.Time
}

func (c *imageLookups) get(spec backend.ImageSpec) (imageEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[spec]
	if !ok || time.Now().After(e.expires) {
		return imageEntry{}, false
	}
	return e, true
}

func (c *imageLookups) put(spec backend.ImageSpec, fingerprints map[string]string, size uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil {
		c.entries = map[backend.ImageSpec]imageEntry{}
	}
	c.entries[spec] = imageEntry{fingerprints: fingerprints, size: size, expires: time.Now().Add(imageTTL)}
}

func (c *imageLookups) forget(spec backend.ImageSpec) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.entries, spec)
}
