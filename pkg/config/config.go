// Package config loads and validates Basalt's YAML configuration.
//
// The schema is a user contract: keys may be added (optional), never renamed.
// Validation walks the YAML tree itself rather than relying on the decoder so
// that every error names the file, the backend and the key, with a line number.
package config

import (
	"bytes"
	"fmt"
	"os"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// Backend is one entry of `backends`, the analogue of one of Cinder's enabled_backends.
type Backend struct {
	Name                     string            `yaml:"name" json:"name"`
	CephConf                 string            `yaml:"cephConf" json:"cephConf"`
	User                     string            `yaml:"user" json:"user"`
	Keyring                  string            `yaml:"keyring" json:"keyring"`
	Pool                     string            `yaml:"pool" json:"pool"`
	Zone                     string            `yaml:"zone" json:"zone"`
	ReservedPercentage       int               `yaml:"reservedPercentage" json:"reservedPercentage"`
	MaxOverSubscriptionRatio float64           `yaml:"maxOverSubscriptionRatio" json:"maxOverSubscriptionRatio"`
	Capabilities             map[string]string `yaml:"capabilities" json:"capabilities,omitempty"`
	// NodeUser and NodeKeyring are the cephx identity node plugins use
	// (--mode=node), a least-privilege user that can map images but not
	// create, remove or re-record them (README, "Ceph users"). Both or
	// neither; without them node plugins use User and Keyring.
	NodeUser    string `yaml:"nodeUser" json:"nodeUser,omitempty"`
	NodeKeyring string `yaml:"nodeKeyring" json:"nodeKeyring,omitempty"`
	// ImageCache is Cinder's image-volume cache for this backend's pool.
	ImageCache ImageCache `yaml:"imageCache" json:"imageCache,omitempty"`
}

// ImageCache configures a backend's image-volume cache (Cinder's
// image_volume_cache_enabled, _max_count, _max_size_gb): a golden image
// from another cluster is copied once into this backend's pool and later
// creates in the same cluster clone that copy (README, "Image-volume cache").
type ImageCache struct {
	Enabled bool `yaml:"enabled" json:"enabled"`
	// MaxCount and MaxSizeGiB bound the entries kept in this pool (0: no
	// bound); beyond them the least recently used entries are evicted.
	MaxCount   int `yaml:"maxCount" json:"maxCount,omitempty"`
	MaxSizeGiB int `yaml:"maxSizeGiB" json:"maxSizeGiB,omitempty"`
}

// Config is the whole file.
type Config struct {
	Backends []Backend `yaml:"backends"`
	// RegistryBackend names the backend whose pool holds Basalt's durable
	// records (name reservations, the volume index). Default: the first backend.
	RegistryBackend string `yaml:"registryBackend"`
	// ScheduleAttempts bounds Cinder-style rescheduling after a failed create.
	ScheduleAttempts int `yaml:"scheduleAttempts"`
	// CephTimeoutSeconds is the deadline of every single Ceph call.
	CephTimeoutSeconds int `yaml:"cephTimeoutSeconds"`
	// StatsIntervalSeconds is how often backends are re-probed and their capacity refreshed.
	StatsIntervalSeconds int `yaml:"statsIntervalSeconds"`
	// MaxSnapshotsPerImage bounds the snapshots of one volume (krbd cannot
	// map an image with more than about 510).
	MaxSnapshotsPerImage int `yaml:"maxSnapshotsPerImage"`
	// MaxCloneDepth is Cinder's rbd_max_clone_depth: a volume deeper in a
	// clone chain is flattened in the background. At most 15, so that a chain
	// (one deeper while its flatten runs) stays within krbd's 16 levels.
	MaxCloneDepth int `yaml:"maxCloneDepth"`
	// FlattenConcurrency is Cinder's rbd_concurrent_flatten_operations.
	FlattenConcurrency int `yaml:"flattenConcurrency"`
	// FlattenTimeoutSeconds is the deadline of one flatten.
	FlattenTimeoutSeconds int `yaml:"flattenTimeoutSeconds"`

	Path string `yaml:"-"`
}

// Defaults, applied when a key is absent.
const (
	DefaultMaxOverSubscriptionRatio = 20
	DefaultScheduleAttempts         = 3
	DefaultCephTimeoutSeconds       = 30
	DefaultStatsIntervalSeconds     = 30
	DefaultMaxSnapshotsPerImage     = 256
	DefaultMaxCloneDepth            = 5
	DefaultFlattenConcurrency       = 2
	DefaultFlattenTimeoutSeconds    = 3600
	maxKrbdChain                    = 16
)

var (
	topKeys = keySet("backends", "registryBackend", "scheduleAttempts", "cephTimeoutSeconds", "statsIntervalSeconds",
		"maxSnapshotsPerImage", "maxCloneDepth", "flattenConcurrency", "flattenTimeoutSeconds")
	backendKeys = keySet("name", "cephConf", "user", "keyring", "pool", "zone", "reservedPercentage", "maxOverSubscriptionRatio", "capabilities",
		"nodeUser", "nodeKeyring", "imageCache")
	imageCacheKeys = keySet("enabled", "maxCount", "maxSizeGiB")
	required       = []string{"name", "cephConf", "user", "keyring", "pool", "zone"}
)

func keySet(keys ...string) map[string]bool {
	m := map[string]bool{}
	for _, k := range keys {
		m[k] = true
	}
	return m
}

// Load reads and validates the file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return Parse(path, data)
}

// Parse validates data as if read from path (path is only used in messages).
func Parse(path string, data []byte) (*Config, error) {
	fail := func(format string, args ...any) error {
		return fmt.Errorf("config %s: %s", path, fmt.Sprintf(format, args...))
	}
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil {
		return nil, fail("malformed YAML: %v", err)
	}
	if len(root.Content) == 0 || root.Content[0].Kind != yaml.MappingNode {
		return nil, fail("the top level must be a mapping with a `backends` list")
	}
	top := root.Content[0]
	if err := checkKeys(top, topKeys, func(key string, line int) error {
		return fail("line %d: unknown key %q at the top level (known: %s)", line, key, known(topKeys))
	}); err != nil {
		return nil, err
	}
	backendsNode := lookup(top, "backends")
	if backendsNode == nil {
		return nil, fail("missing required key `backends`: at least one backend must be configured")
	}
	if backendsNode.Kind != yaml.SequenceNode {
		return nil, fail("line %d: `backends` must be a list", backendsNode.Line)
	}
	for i, b := range backendsNode.Content {
		label := fmt.Sprintf("backend #%d", i+1)
		if b.Kind != yaml.MappingNode {
			return nil, fail("line %d: %s must be a mapping", b.Line, label)
		}
		if n := lookup(b, "name"); n != nil && n.Value != "" {
			label = fmt.Sprintf("backend %q", n.Value)
		}
		if err := checkKeys(b, backendKeys, func(key string, line int) error {
			return fail("line %d: %s: unknown key %q (known: %s)", line, label, key, known(backendKeys))
		}); err != nil {
			return nil, err
		}
		if ic := lookup(b, "imageCache"); ic != nil {
			if ic.Kind != yaml.MappingNode {
				return nil, fail("line %d: %s: `imageCache` must be a mapping", ic.Line, label)
			}
			if err := checkKeys(ic, imageCacheKeys, func(key string, line int) error {
				return fail("line %d: %s: unknown key %q in imageCache (known: %s)", line, label, key, known(imageCacheKeys))
			}); err != nil {
				return nil, err
			}
		}
		for _, k := range required {
			if n := lookup(b, k); n == nil || strings.TrimSpace(n.Value) == "" {
				return nil, fail("line %d: %s: missing required key %q", b.Line, label, k)
			}
		}
	}
	var cfg Config
	if err := top.Decode(&cfg); err != nil {
		return nil, fail("%v", err)
	}
	cfg.Path = path
	if err := cfg.validate(); err != nil {
		return nil, fail("%v", err)
	}
	return &cfg, nil
}

func (c *Config) validate() error {
	if len(c.Backends) == 0 {
		return fmt.Errorf("`backends` is empty: at least one backend must be configured")
	}
	seen := map[string]bool{}
	for i := range c.Backends {
		b := &c.Backends[i]
		if seen[b.Name] {
			return fmt.Errorf("backend %q: duplicate backend name (key \"name\")", b.Name)
		}
		seen[b.Name] = true
		if strings.ContainsAny(b.Name, " /@\t") {
			return fmt.Errorf("backend %q: key \"name\" must not contain spaces, '/' or '@'", b.Name)
		}
		if b.ReservedPercentage < 0 || b.ReservedPercentage > 100 {
			return fmt.Errorf("backend %q: key \"reservedPercentage\" must be within 0..100, got %d", b.Name, b.ReservedPercentage)
		}
		if (b.NodeUser == "") != (b.NodeKeyring == "") {
			return fmt.Errorf("backend %q: keys \"nodeUser\" and \"nodeKeyring\" go together (the node plugins' cephx user and its keyring)", b.Name)
		}
		if b.ImageCache.MaxCount < 0 || b.ImageCache.MaxSizeGiB < 0 {
			return fmt.Errorf("backend %q: keys \"imageCache.maxCount\" and \"imageCache.maxSizeGiB\" must be >= 0 (0: no bound)", b.Name)
		}
		if b.MaxOverSubscriptionRatio == 0 {
			b.MaxOverSubscriptionRatio = DefaultMaxOverSubscriptionRatio
		}
		if b.MaxOverSubscriptionRatio < 1 {
			return fmt.Errorf("backend %q: key \"maxOverSubscriptionRatio\" must be >= 1, got %g", b.Name, b.MaxOverSubscriptionRatio)
		}
	}
	if c.RegistryBackend == "" {
		c.RegistryBackend = c.Backends[0].Name
	} else if !seen[c.RegistryBackend] {
		return fmt.Errorf("key \"registryBackend\": no backend is named %q", c.RegistryBackend)
	}
	for _, f := range []struct {
		key string
		v   *int
		def int
	}{
		{"scheduleAttempts", &c.ScheduleAttempts, DefaultScheduleAttempts},
		{"cephTimeoutSeconds", &c.CephTimeoutSeconds, DefaultCephTimeoutSeconds},
		{"statsIntervalSeconds", &c.StatsIntervalSeconds, DefaultStatsIntervalSeconds},
		{"maxSnapshotsPerImage", &c.MaxSnapshotsPerImage, DefaultMaxSnapshotsPerImage},
		{"maxCloneDepth", &c.MaxCloneDepth, DefaultMaxCloneDepth},
		{"flattenConcurrency", &c.FlattenConcurrency, DefaultFlattenConcurrency},
		{"flattenTimeoutSeconds", &c.FlattenTimeoutSeconds, DefaultFlattenTimeoutSeconds},
	} {
		if *f.v < 0 {
			return fmt.Errorf("key %q must be positive, got %d", f.key, *f.v)
		}
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	if c.MaxCloneDepth >= maxKrbdChain {
		return fmt.Errorf("key \"maxCloneDepth\" must be below %d (krbd maps at most %d levels of clones, and a new clone is one deeper until its flatten ends), got %d", maxKrbdChain, maxKrbdChain, c.MaxCloneDepth)
	}
	return nil
}

// UseNodeIdentity makes every backend that names a node user use it instead
// of the controller's: a node plugin never needs, nor should hold, the
// controller's key.
func (c *Config) UseNodeIdentity() {
	for i := range c.Backends {
		if b := &c.Backends[i]; b.NodeUser != "" {
			b.User, b.Keyring = b.NodeUser, b.NodeKeyring
		}
	}
}

// Backend returns the backend called name.
func (c *Config) Backend(name string) (Backend, bool) {
	for _, b := range c.Backends {
		if b.Name == name {
			return b, true
		}
	}
	return Backend{}, false
}

func checkKeys(m *yaml.Node, allowed map[string]bool, unknown func(key string, line int) error) error {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if k := m.Content[i]; !allowed[k.Value] {
			return unknown(k.Value, k.Line)
		}
	}
	return nil
}

func lookup(m *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

func known(set map[string]bool) string {
	keys := make([]string, 0, len(set))
	for k := range set {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return strings.Join(keys, ", ")
}
