package driver

import (
	"maps"
	"sort"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/basalt-csi/basalt/pkg/backend"
	"github.com/basalt-csi/basalt/pkg/provision"
	"github.com/basalt-csi/basalt/pkg/scheduler"
)

// StorageClass parameters.
const (
	ParamImage      = "image"
	ParamBackend    = "backend"
	ParamCapability = "capability."
	paramK8sPrefix  = "csi.storage.k8s.io/"
	paramPVCName    = paramK8sPrefix + "pvc/name"
	paramPVCNS      = paramK8sPrefix + "pvc/namespace"
	paramPVName     = paramK8sPrefix + "pv/name"
)

// parsedParams is a validated parameter map.
type parsedParams struct {
	image    *backend.ImageSpec
	backend  string
	caps     map[string]string
	identity map[string]string // the parameters that define the volume
	metadata map[string]string // image metadata from the csi.storage.k8s.io keys
}

func parseParams(params map[string]string) (parsedParams, error) {
	p := parsedParams{caps: map[string]string{}, identity: map[string]string{}, metadata: map[string]string{}}
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := params[k]
		switch {
		case k == ParamImage:
			spec, err := backend.ParseImageSpec(v)
			if err != nil {
				return p, invalid("parameter %q: %v", k, err)
			}
			p.image = &spec
			p.identity[k] = v
		case k == ParamBackend:
			if v == "" {
				return p, invalid("parameter %q must name a backend", k)
			}
			p.backend = v
			p.identity[k] = v
		case strings.HasPrefix(k, ParamCapability):
			name := strings.TrimPrefix(k, ParamCapability)
			if name == "" {
				return p, invalid("parameter %q has no capability name after %q", k, ParamCapability)
			}
			p.caps[name] = v
			p.identity[k] = v
		case k == paramPVCName:
			p.metadata[provision.MetaPVCName] = v
		case k == paramPVCNS:
			p.metadata[provision.MetaPVCNamespace] = v
		case k == paramPVName:
			p.metadata[provision.MetaPVName] = v
		case provision.IsQoSParam(k):
			// Mutable: stored as librbd overrides, not part of the identity.
			set, _, err := provision.QoSMetadata(map[string]string{k: v})
			if err != nil {
				return p, toStatus(err)
			}
			maps.Copy(p.metadata, set)
		case strings.HasPrefix(k, paramK8sPrefix):
			// Other keys the Kubernetes sidecars add are accepted and ignored.
		default:
			return p, invalid("unknown parameter %q (known: %s, %s, %s<key>, %s, %s*)", k, ParamImage, ParamBackend, ParamCapability, provision.QoSParams(), paramK8sPrefix)
		}
	}
	return p, nil
}

func (p parsedParams) schedRequest(topo *csi.TopologyRequirement) scheduler.Request {
	req := scheduler.Request{Backend: p.backend, Capabilities: p.caps}
	for _, t := range topo.GetRequisite() {
		req.Requisite = append(req.Requisite, t.GetSegments())
	}
	for _, t := range topo.GetPreferred() {
		req.Preferred = append(req.Preferred, t.GetSegments())
	}
	return req
}

func topologyOf(zone string) []*csi.Topology {
	return []*csi.Topology{{Segments: map[string]string{scheduler.TopologyKey: zone}}}
}
