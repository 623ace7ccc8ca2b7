package node

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"github.com/basalt-csi/basalt/pkg/backend"
	"github.com/basalt-csi/basalt/pkg/node/mapper"
)

// A daemon mapper's process (rbd-fuse, rbd-nbd) is the image's Ceph client.
// When it dies (killed with the plugin's container, OOM, a crash), its
// watch on the image stays ~30 s, during which DeleteVolume sees the image
// in use. The node knows when such a daemon of its own is dead, so it
// blocklists that client, as the controller does with its predecessor.
// Knowing the address takes care: it is recorded only when it is certain,
// i.e. a read-write map after which the image has exactly one watcher on
// this host where it had none before (Clients lists only this host's
// clients); otherwise (a read-only map, a shared image, a map that reused
// a mapping) nothing is recorded and the watch simply expires. krbd is never fenced: the kernel
// client is shared by every krbd mapping of the host.

// mapTracked maps spec for volumeID; client then returns the new daemon's
// Ceph client address when certain ("" otherwise), waiting for the lookup
// that tells, which runs meanwhile: the stage probes the device at the same
// time. ignore is an address already fenced, whose watch may linger a
// moment.
//
// The "before" listing runs while Map starts the daemon (it is an image
// open, ~10 ms, that need not wait): the daemon registers its watch only
// once it has connected and opened the image, long after. Should the
// listing ever see that watch all the same, "before" is not empty and
// nothing is recorded: the race can only lose the address, never record a
// wrong one.
func (s *Service) mapTracked(ctx context.Context, volumeID string, spec mapper.Spec, ignore string) (m mapper.Mapping, client func() string, err error) {
	none := func() string { return "" }
	// A read-only map registers no watch: the one that appears would be
	// someone else's.
	track := s.Clients != nil && s.Mapper.Name() != "krbd" && !spec.ReadOnly
	type listing struct {
		clients []string
		err     error
	}
	before := make(chan listing, 1)
	if track {
		go func() {
			c, err := s.clientsBut(ctx, volumeID, ignore)
			before <- listing{c, err}
		}()
	}
	m, err = s.Mapper.Map(ctx, spec)
	if !track {
		return m, none, err
	}
	if b := <-before; err != nil || b.err != nil || len(b.clients) > 0 {
		return m, none, err
	}
	addr := make(chan string, 1)
	go func() {
		after, err := s.clientsBut(ctx, volumeID, ignore)
		if err != nil || len(after) != 1 {
			addr <- ""
			return
		}
		addr <- after[0]
	}()
	var once sync.Once
	var got string
	return m, func() string { once.Do(func() { got = <-addr }); return got }, nil
}

func (s *Service) clientsBut(ctx context.Context, volumeID, ignore string) ([]string, error) {
	c, err := s.Clients(ctx, volumeID)
	return slices.DeleteFunc(c, func(a string) bool { return a == ignore }), err
}

// fenceDead blocklists the client of rec's daemon if its watch is still on
// the image, and returns the address it fenced ("" if none). Call it only
// right after an Unmap of rec succeeded: the daemon is then gone for sure
// (a clean exit closed the image and took the watch away; a killed or dead
// daemon left it). Before that, a mapping that merely looks broken (its
// staging mount missing) may have a live daemon that must not be fenced.
func (s *Service) fenceDead(ctx context.Context, log *slog.Logger, rec *Record) string {
	addr := rec.Mapping.Client
	if addr == "" || s.Fence == nil {
		return ""
	}
	now, err := s.Clients(ctx, rec.VolumeID)
	if err != nil || !slices.Contains(now, addr) {
		return "" // gone with the daemon (or cannot tell: it expires anyway)
	}
	if err := s.Fence(ctx, rec.VolumeID, addr); err != nil {
		log.Warn("could not blocklist the Ceph client of a dead mapping; its watch expires in about 30 s", "client", addr, "error", err)
		return ""
	}
	log.Info("blocklisted the Ceph client of a dead mapping, releasing its watch", "client", addr, "device", rec.Mapping.Device)
	return addr
}

// SameHost keeps the client addresses ("IP:port/nonce") whose IP is that of
// self, the node plugin's own client address(es) as librados prints them
// ("[v2:IP:port/nonce,v1:IP:port/nonce]" or "IP:port/nonce").
func SameHost(addrs []string, self string) []string {
	own := map[string]bool{}
	for _, a := range backend.ClientAddrList(self) {
		if ip := hostOf(a); ip != "" {
			own[ip] = true
		}
	}
	var out []string
	for _, a := range addrs {
		if own[hostOf(a)] {
			out = append(out, a)
		}
	}
	return out
}

// hostOf is the IP of one client address (with or without "v2:"/"v1:").
func hostOf(addr string) string {
	addr = strings.TrimPrefix(strings.TrimPrefix(strings.TrimSpace(addr), "v2:"), "v1:")
	hostPort, _, _ := strings.Cut(addr, "/")
	if i := strings.LastIndex(hostPort, ":"); i > 0 {
		return strings.Trim(hostPort[:i], "[]")
	}
	return ""
}
