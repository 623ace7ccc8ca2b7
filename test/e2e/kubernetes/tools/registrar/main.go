// Command registrar is a minimal node-driver-registrar: it registers a CSI
// driver with the kubelet through the plugin registration API.
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"google.golang.org/grpc"
	regapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

type server struct {
	regapi.UnimplementedRegistrationServer
	name, endpoint string
}

func (s *server) GetInfo(ctx context.Context, _ *regapi.InfoRequest) (*regapi.PluginInfo, error) {
	log.Printf("registrar: GetInfo -> %s at %s", s.name, s.endpoint)
	return &regapi.PluginInfo{
		Type:              regapi.CSIPlugin,
		Name:              s.name,
		Endpoint:          s.endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

func (s *server) NotifyRegistrationStatus(ctx context.Context, st *regapi.RegistrationStatus) (*regapi.RegistrationStatusResponse, error) {
	if st.PluginRegistered {
		log.Printf("registrar: registered with kubelet")
	} else {
		log.Printf("registrar: registration failed: %s", st.Error)
	}
	return &regapi.RegistrationStatusResponse{}, nil
}

func main() {
	log.SetOutput(os.Stderr)
	endpoint := flag.String("kubelet-registration-path", "", "CSI socket path as the kubelet should dial it (required)")
	regDir := flag.String("plugin-registration-dir", "/var/lib/kubelet/plugins_registry", "kubelet's plugin registration directory")
	name := flag.String("driver-name", "rbd.basalt.dev", "CSI driver name")
	flag.Parse()
	if *endpoint == "" {
		log.Fatal("registrar: --kubelet-registration-path is required")
	}
	sock := filepath.Join(*regDir, *name+"-reg.sock")
	if err := os.MkdirAll(*regDir, 0o750); err != nil {
		log.Fatalf("registrar: %v", err)
	}
	if err := os.Remove(sock); err != nil && !os.IsNotExist(err) {
		log.Fatalf("registrar: %v", err)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		log.Fatalf("registrar: %v", err)
	}
	srv := grpc.NewServer()
	regapi.RegisterRegistrationServer(srv, &server{name: *name, endpoint: *endpoint})
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() { log.Printf("registrar: %v, stopping", <-sig); srv.Stop() }()
	log.Printf("registrar: serving %s for driver %s (endpoint %s)", sock, *name, *endpoint)
	if err := srv.Serve(l); err != nil {
		log.Printf("registrar: serve: %v", err)
	}
	os.Remove(sock)
}
