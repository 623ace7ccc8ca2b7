package main

import (
	"context"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/metadata/fake"

	"github.com/basalt-csi/basalt/pkg/config"
)

func TestLabelOf(t *testing.T) {
	scheme := runtime.NewScheme()
	if err := metav1.AddMetaToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	node := metav1.TypeMeta{APIVersion: "v1", Kind: "Node"}
	c := fake.NewSimpleMetadataClient(scheme,
		&metav1.PartialObjectMetadata{TypeMeta: node, ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{"topology.kubernetes.io/zone": "zone-b"}}},
		&metav1.PartialObjectMetadata{TypeMeta: node, ObjectMeta: metav1.ObjectMeta{Name: "n2"}},
	)
	ctx := context.Background()
	if z, err := labelOf(ctx, c, "n1", "topology.kubernetes.io/zone"); err != nil || z != "zone-b" {
		t.Fatalf("n1: %q %v", z, err)
	}
	if z, err := labelOf(ctx, c, "n2", "topology.kubernetes.io/zone"); err != nil || z != "" {
		t.Fatalf("unlabelled n2: %q %v", z, err)
	}
	if _, err := labelOf(ctx, c, "n3", "topology.kubernetes.io/zone"); err == nil {
		t.Fatal("a missing node gave no error")
	}
}

// The rule for a node without a zone: warned about (it can use no volume)
// only when every backend has a zone.
func TestZonelessWarning(t *testing.T) {
	zoned := []config.Backend{{Name: "a", Zone: "zone-a"}, {Name: "b", Zone: "zone-b"}}
	mixed := append(zoned, config.Backend{Name: "c"})
	for _, c := range []struct {
		zone     string
		backends []config.Backend
		warn     bool
	}{
		{"", zoned, true},
		{"", mixed, false},
		{"zone-a", zoned, false},
		{"zone-c", zoned, false}, // a zone no backend serves is the operator's choice
	} {
		if got := zonelessWarning(c.zone, c.backends) != ""; got != c.warn {
			t.Errorf("zone %q, backends %v: warning %v, want %v", c.zone, c.backends, got, c.warn)
		}
	}
}
