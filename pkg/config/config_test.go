package config

import (
	"strings"
	"testing"
)

const good = `
backends:
  - name: fast-a
    cephConf: /etc/ceph/ceph.conf
    user: admin
    keyring: /etc/ceph/ceph.client.admin.keyring
    pool: volumes
    zone: zone-a
    reservedPercentage: 10
    capabilities: {tier: fast}
  - name: slow-b
    cephConf: /etc/ceph/b.conf
    user: basalt
    keyring: /etc/ceph/b.keyring
    pool: vols
    zone: zone-b
    maxOverSubscriptionRatio: 4
`

func TestParseGood(t *testing.T) {
	c, err := Parse("basalt.yaml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Backends) != 2 {
		t.Fatalf("backends = %d", len(c.Backends))
	}
	a, b := c.Backends[0], c.Backends[1]
	if a.MaxOverSubscriptionRatio != DefaultMaxOverSubscriptionRatio || b.MaxOverSubscriptionRatio != 4 {
		t.Errorf("ratios = %g, %g", a.MaxOverSubscriptionRatio, b.MaxOverSubscriptionRatio)
	}
	if a.ReservedPercentage != 10 || b.ReservedPercentage != 0 {
		t.Errorf("reserved = %d, %d", a.ReservedPercentage, b.ReservedPercentage)
	}
	if a.Capabilities["tier"] != "fast" {
		t.Errorf("capabilities = %v", a.Capabilities)
	}
	if c.RegistryBackend != "fast-a" || c.ScheduleAttempts != 3 || c.CephTimeoutSeconds != 30 {
		t.Errorf("defaults: %+v", c)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		want       []string
	}{
		{"malformed", "backends: [", []string{"basalt.yaml", "malformed YAML"}},
		{"no backends", "registryBackend: x\n", []string{"basalt.yaml", "backends"}},
		{"empty backends", "backends: []\n", []string{"at least one backend"}},
		{"unknown top key", good + "bogus: 1\n", []string{"basalt.yaml", `unknown key "bogus"`, "top level"}},
		{"unknown backend key", strings.Replace(good, "pool: vols", "pool: vols\n    poool: x", 1),
			[]string{"basalt.yaml", `backend "slow-b"`, `unknown key "poool"`}},
		{"missing key", strings.Replace(good, "    keyring: /etc/ceph/b.keyring\n", "", 1),
			[]string{"basalt.yaml", `backend "slow-b"`, `missing required key "keyring"`}},
		{"missing name", strings.Replace(good, "  - name: slow-b\n    cephConf", "  - cephConf", 1),
			[]string{"backend #2", `missing required key "name"`}},
		{"duplicate", strings.Replace(good, "slow-b", "fast-a", 1), []string{`backend "fast-a"`, "duplicate"}},
		{"bad reserved", strings.Replace(good, "reservedPercentage: 10", "reservedPercentage: 120", 1),
			[]string{`backend "fast-a"`, "reservedPercentage"}},
		{"bad ratio", strings.Replace(good, "maxOverSubscriptionRatio: 4", "maxOverSubscriptionRatio: 0.5", 1),
			[]string{`backend "slow-b"`, "maxOverSubscriptionRatio"}},
		{"wrong type", strings.Replace(good, "reservedPercentage: 10", "reservedPercentage: ten", 1),
			[]string{"basalt.yaml", "ten"}},
		{"unknown registry", good + "registryBackend: nope\n", []string{"registryBackend", "nope"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("basalt.yaml", []byte(tc.yaml))
			if err == nil {
				t.Fatal("expected an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// The example configurations shipped in the repository must stay valid.
func TestShippedExamplesParse(t *testing.T) {
	for _, path := range []string{"../../deploy/config.yaml", "../../examples/config/two-clusters.yaml"} {
		c, err := Load(path)
		if err != nil {
			t.Errorf("%s: %v", path, err)
			continue
		}
		if len(c.Backends) == 0 {
			t.Errorf("%s: no backends", path)
		}
	}
}

func TestCloneDepthBoundedByKrbd(t *testing.T) {
	base := "backends:\n  - {name: a, cephConf: c, user: u, keyring: k, pool: p, zone: z}\n"
	if _, err := Parse("x", []byte(base+"maxCloneDepth: 16\n")); err == nil || !strings.Contains(err.Error(), "maxCloneDepth") {
		t.Fatalf("maxCloneDepth 16 accepted: %v", err)
	}
	c, err := Parse("x", []byte(base+"maxCloneDepth: 15\n"))
	if err != nil || c.MaxCloneDepth != 15 || c.MaxSnapshotsPerImage != DefaultMaxSnapshotsPerImage || c.FlattenConcurrency != DefaultFlattenConcurrency {
		t.Fatalf("parse: %+v, %v", c, err)
	}
}

func TestNodeIdentity(t *testing.T) {
	base := "backends:\n  - {name: a, cephConf: c, user: ctl, keyring: ctl.keyring, pool: p, zone: z%s}\n  - {name: b, cephConf: c, user: ctl, keyring: ctl.keyring, pool: p, zone: z}\n"
	if _, err := Parse("x", []byte(strings.Replace(base, "%s", ", nodeUser: n", 1))); err == nil || !strings.Contains(err.Error(), "nodeKeyring") {
		t.Fatalf("nodeUser without nodeKeyring accepted: %v", err)
	}
	c, err := Parse("x", []byte(strings.Replace(base, "%s", ", nodeUser: n, nodeKeyring: n.keyring", 1)))
	if err != nil {
		t.Fatal(err)
	}
	c.UseNodeIdentity()
	if a := c.Backends[0]; a.User != "n" || a.Keyring != "n.keyring" {
		t.Errorf("backend a uses %s %s, want the node user", a.User, a.Keyring)
	}
	if b := c.Backends[1]; b.User != "ctl" || b.Keyring != "ctl.keyring" {
		t.Errorf("backend b uses %s %s, want the controller's user (it names no node user)", b.User, b.Keyring)
	}
}
