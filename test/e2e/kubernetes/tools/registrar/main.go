// Command registrar is a minimal node-driver-registrar: it registers a CSI
// driver with the kubelet through the plugin registration API. It takes
// node-driver-registrar's own flags, so that it runs in its place in
// deploy/kubernetes/node.yaml: the real one cannot be built here (the module
// proxy serves no version of github.com/kubernetes-csi/node-driver-registrar).
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
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
	regDir := flag.String("plugin-registration-dir", "/registration", "kubelet's plugin registration directory (as this process sees it)")
	csiAddress := flag.String("csi-address", "", "the driver's CSI socket, to ask its name (GetPluginInfo)")
	name := flag.String("driver-name", "", "CSI driver name (default: asked from --csi-address)")
	httpEndpoint := flag.String("http-endpoint", "", "serve /healthz here (ok while the registration socket exists)")
	flag.Int("v", 0, "log level (accepted for compatibility)")
	flag.Parse()
	if *endpoint == "" {
		log.Fatal("registrar: --kubelet-registration-path is required")
	}
	if *name == "" {
		*name = driverName(*csiAddress)
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
	if *httpEndpoint != "" {
		go serveHealth(*httpEndpoint, sock)
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

// driverName asks the driver at addr (unix socket path or unix:// URL) for
// its name, retrying until it answers (it may start after this process).
func driverName(addr string) string {
	if addr == "" {
		log.Fatal("registrar: --csi-address or --driver-name is required")
	}
	target := "unix://" + strings.TrimPrefix(addr, "unix://")
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatalf("registrar: %v", err)
	}
	defer conn.Close()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		info, err := csi.NewIdentityClient(conn).GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
		cancel()
		if err == nil {
			return info.GetName()
		}
		log.Printf("registrar: asking %s for the driver name: %v; retrying", addr, err)
		time.Sleep(2 * time.Second)
	}
}

// serveHealth answers /healthz: 200 while the registration socket exists.
func serveHealth(addr, sock string) {
	http.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if _, err := os.Stat(sock); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	log.Printf("registrar: /healthz on %s", addr)
	log.Print(http.ListenAndServe(addr, nil))
}
