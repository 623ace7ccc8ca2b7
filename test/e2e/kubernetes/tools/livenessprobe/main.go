// Command livenessprobe is a minimal CSI livenessprobe: /healthz answers
// 200 when the driver's Probe says it is ready. It takes the upstream
// livenessprobe's flags, so that it runs in its place in deploy/kubernetes:
// the real one cannot be built here (the module proxy serves no version of
// github.com/kubernetes-csi/livenessprobe).
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func main() {
	log.SetOutput(os.Stderr)
	csiAddress := flag.String("csi-address", "/run/csi/socket", "the driver's CSI socket")
	httpEndpoint := flag.String("http-endpoint", "", "address to serve /healthz on (overrides --health-port)")
	port := flag.Int("health-port", 9808, "port to serve /healthz on")
	timeout := flag.Duration("probe-timeout", time.Second, "deadline of one Probe")
	flag.Int("v", 0, "log level (accepted for compatibility)")
	flag.Parse()
	addr := *httpEndpoint
	if addr == "" {
		addr = fmt.Sprintf(":%d", *port)
	}
	conn, err := grpc.NewClient("unix://"+strings.TrimPrefix(*csiAddress, "unix://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatalf("livenessprobe: %v", err)
	}
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), *timeout)
		defer cancel()
		resp, err := csi.NewIdentityClient(conn).Probe(ctx, &csi.ProbeRequest{})
		switch {
		case err != nil:
			http.Error(w, err.Error(), http.StatusInternalServerError)
		case resp.GetReady() != nil && !resp.GetReady().GetValue():
			http.Error(w, "driver is not ready", http.StatusInternalServerError)
		default:
			_, _ = w.Write([]byte("ok"))
		}
	})
	log.Printf("livenessprobe: /healthz on %s for %s", addr, *csiAddress)
	log.Fatal(http.ListenAndServe(addr, nil))
}
