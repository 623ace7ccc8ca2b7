package provision

import (
	"context"
)

// FencePrevious blocklists the Ceph clients of this process's previous
// incarnation (same identity: the controller's host name), which a SIGKILL
// or a crash left holding watches on images it had open: for about 30 s
// those watches make the images look in use, and the CO's retry of an
// interrupted create could not remove what it left. A new incarnation knows
// its predecessor is dead, so it fences it at start, then records its own
// addresses. Backends that are down now are not fenced (their watches
// expire on their own).
func (p *Provisioner) FencePrevious(ctx context.Context, identity string) error {
	reg, err := p.registry()
	if err != nil {
		return err
	}
	prev, err := reg.Incarnation(ctx, identity)
	if err != nil {
		return classify(err, "reading the previous incarnation")
	}
	now := map[string]string{}
	for _, name := range p.Backends.Up() {
		cl, _, err := p.Backends.Get(name)
		if err != nil {
			continue
		}
		now[name] = cl.ClientAddrs()
		old := prev[name]
		if old == "" || old == now[name] {
			continue
		}
		if err := cl.Blocklist(ctx, old); err != nil {
			p.Log.Warn("could not blocklist the previous incarnation's Ceph client; its watches expire in about 30 s", "backend", name, "client", old, "error", err)
			continue
		}
		p.Log.Info("blocklisted the previous incarnation's Ceph client, releasing its watches", "backend", name, "client", old)
	}
	return classify(reg.SaveIncarnation(ctx, identity, now), "recording this incarnation")
}
