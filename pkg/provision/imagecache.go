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

// imageCache remembers which clusters hold a golden image, so a burst of
// creates from one image does not open it once per volume.
type imageCache struct {
	mu      sync.Mutex
	entries map[backend.ImageSpec]imageEntry
}

type imageEntry struct {
	fsids   []string
	size    uint64
	expires time.Time
}

func (c *imageCache) get(spec backend.ImageSpec) (imageEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[spec]
	if !ok || time.Now().After(e.expires) {
		return imageEntry{}, false
	}
	return e, true
}

func (c *imageCache) put(spec backend.ImageSpec, fsids []string, size uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil {
		c.entries = map[backend.ImageSpec]imageEntry{}
	}
	c.entries[spec] = imageEntry{fsids: fsids, size: size, expires: time.Now().Add(imageTTL)}
}

func (c *imageCache) forget(spec backend.ImageSpec) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.entries, spec)
}
