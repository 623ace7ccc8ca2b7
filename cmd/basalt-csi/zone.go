package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/basalt-csi/basalt/pkg/config"
)

// zoneLookupTimeout bounds the start-up wait for the API server.
const zoneLookupTimeout = 60 * time.Second

// nodes is the Node resource, read through client-go's metadata client:
// labels are metadata, and the typed clientset would link (and initialise)
// every Kubernetes API group, about 50 MB of binary and 30 MiB of RSS in
// every node plugin and controller for one GET.
var nodes = schema.GroupVersionResource{Version: "v1", Resource: "nodes"}

// nodeZone is the node plugin's zone from its Node object's label (one
// DaemonSet serves every zone, as users expect of a CSI driver): the node
// named name, read with in-cluster credentials or kubeconfig. A missing
// label is zone "". It retries until ctx's deadline: the API server may be
// starting too.
func nodeZone(ctx context.Context, name, label, kubeconfig string) (string, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return "", fmt.Errorf("--zone-from-node-label needs API access: %w", err)
	}
	cfg.Timeout = 10 * time.Second
	client, err := metadata.NewForConfig(cfg)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, zoneLookupTimeout)
	defer cancel()
	for {
		zone, err := labelOf(ctx, client, name, label)
		if err == nil {
			return zone, nil
		}
		select {
		case <-ctx.Done():
			return "", err
		case <-time.After(2 * time.Second):
		}
	}
}

// labelOf reads one label of node name ("" when it is not set).
func labelOf(ctx context.Context, c metadata.Interface, name, label string) (string, error) {
	n, err := c.Resource(nodes).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("reading node %s for its label %s: %w", name, label, err)
	}
	return n.Labels[label], nil
}

// zonelessWarning explains what a node without a zone can use: nothing
// when every backend has a zone. It reports no topology then, so the
// scheduler keeps pods that need Basalt volumes off it (a PV's node
// affinity names its zone; a WaitForFirstConsumer claim needs a
// CSIStorageCapacity or allowedTopologies term that matches the node) and
// no volume is ever placed for a node that could not use it.
func zonelessWarning(zone string, backends []config.Backend) string {
	if zone != "" {
		return ""
	}
	for _, b := range backends {
		if b.Zone == "" {
			return ""
		}
	}
	return "this node has no zone and every backend has one: no Basalt volume can be used here, and Kubernetes schedules no pod that needs one to this node; label the node (or set --zone)"
}

// logZone logs the node's zone and, if it has none that any backend
// serves, why no volume can be used on it.
func logZone(log *slog.Logger, zone, source string, backends []config.Backend) {
	log.Info("node zone", "zone", zone, "from", source)
	if w := zonelessWarning(zone, backends); w != "" {
		log.Warn(w)
	}
}
