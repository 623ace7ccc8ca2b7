//go:build tools

package tools

// The CSI sidecars, built from this module rather than each from its own:
// one module means one build of client-go, grpc and the rest for all of
// them and for Kubernetes (the staging modules are pinned to v0.36.3 by the
// replace block; each sidecar's own go.mod asks for the same minor).
import (
	_ "github.com/kubernetes-csi/external-attacher/v4/cmd/csi-attacher"
	_ "github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner"
	_ "github.com/kubernetes-csi/external-resizer/v2/cmd/csi-resizer"
	_ "github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter"
	_ "github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller"
)
