// Package driver is Basalt's gRPC surface: the CSI Identity, Controller and
// Node services, validation, and the interceptors that give every request an
// ID, log it without secrets, count and time it (pkg/metrics) and map errors
// to CSI codes. The work itself is done by pkg/provision (controller) and
// pkg/node (node).
package driver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-lib-utils/protosanitizer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/basalt-csi/basalt/pkg/metrics"
)

// Listen opens a CSI endpoint: unix:///path or tcp://host:port.
func Listen(endpoint string) (net.Listener, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return nil, fmt.Errorf("endpoint %q: %w", endpoint, err)
	}
	switch u.Scheme {
	case "unix":
		path := u.Path
		if u.Host != "" {
			path = filepath.Join(u.Host, u.Path)
		}
		if path == "" {
			return nil, fmt.Errorf("endpoint %q has no socket path", endpoint)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
			return nil, err
		}
		// A socket left by a previous run would make Listen fail.
		if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
			return nil, fmt.Errorf("removing stale socket %s: %w", path, err)
		}
		return net.Listen("unix", path)
	case "tcp":
		return net.Listen("tcp", u.Host)
	}
	return nil, fmt.Errorf("endpoint %q: scheme must be unix:// or tcp://", endpoint)
}

// NewGRPCServer registers the services on a server with Basalt's interceptors.
func NewGRPCServer(log *slog.Logger, ids csi.IdentityServer, cs csi.ControllerServer, ns csi.NodeServer) *grpc.Server {
	srv := grpc.NewServer(grpc.UnaryInterceptor(interceptor(log)))
	csi.RegisterIdentityServer(srv, ids)
	if cs != nil {
		csi.RegisterControllerServer(srv, cs)
		if c, ok := cs.(*Controller); ok {
			csi.RegisterGroupControllerServer(srv, c.Group())
		}
	}
	if ns != nil {
		csi.RegisterNodeServer(srv, ns)
	}
	return srv
}

type ctxKey struct{}

// Log returns the request-scoped logger set by the interceptor.
func Log(ctx context.Context, fallback *slog.Logger) *slog.Logger {
	if l, ok := ctx.Value(ctxKey{}).(*slog.Logger); ok {
		return l
	}
	return fallback
}

func newRequestID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// volumeOf pulls the volume ID or name out of a request for the log line.
func volumeOf(req any) []any {
	switch r := req.(type) {
	case interface{ GetVolumeId() string }:
		if r.GetVolumeId() != "" {
			return []any{"volume", r.GetVolumeId()}
		}
	}
	if r, ok := req.(interface{ GetName() string }); ok && r.GetName() != "" {
		return []any{"name", r.GetName()}
	}
	return nil
}

func interceptor(base *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		method := info.FullMethod[strings.LastIndex(info.FullMethod, "/")+1:]
		log := base.With(append([]any{"method", method, "req", newRequestID()}, volumeOf(req)...)...)
		ctx = context.WithValue(ctx, ctxKey{}, log)
		quiet := method == "Probe" || method == "GetPluginInfo" || strings.HasSuffix(method, "GetCapabilities")
		if !quiet {
			log.Info("request", "body", protosanitizer.StripSecrets(req).String())
		}
		start := time.Now()
		defer func() {
			if p := recover(); p != nil {
				log.Error("panic", "panic", p, "stack", string(debug.Stack()))
				err = status.Errorf(codes.Internal, "internal error: %v", p)
			}
			st := status.Convert(err)
			metrics.ObserveCSI(method, st.Code().String(), time.Since(start))
			switch {
			case err != nil:
				log.Warn("failed", "code", st.Code().String(), "error", st.Message(), "took", time.Since(start).Round(time.Millisecond))
			case !quiet:
				log.Info("done", "took", time.Since(start).Round(time.Millisecond), "body", protosanitizer.StripSecrets(resp).String())
			}
		}()
		return handler(ctx, req)
	}
}
