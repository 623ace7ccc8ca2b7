// Command fakecri serves a fake CRI runtime (k8s.io/cri-client/pkg/fake) on a
// unix socket, so a real kubelet can run pods without real containers. Both the
// RuntimeService and the ImageService are served on the one socket.
package main

import (
	"context"
	"flag"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"google.golang.org/grpc"
	kubeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-client/pkg/fake"
	"k8s.io/cri-client/pkg/util"
)

// runtime wraps the fake so that every container gets an absolute log path.
// With an empty log path the kubelet's log cleanup globs "*" in its own
// working directory and deletes what it finds.
type runtime struct {
	*fake.RemoteRuntime
	logDir string
}

func (r *runtime) CreateContainer(ctx context.Context, req *kubeapi.CreateContainerRequest) (*kubeapi.CreateContainerResponse, error) {
	resp, err := r.RemoteRuntime.CreateContainer(ctx, req)
	if err != nil {
		return nil, err
	}
	dir := req.GetSandboxConfig().GetLogDirectory()
	if !filepath.IsAbs(dir) {
		dir = r.logDir
	}
	rel := filepath.Clean("/" + req.GetConfig().GetLogPath())
	if rel == "/" {
		rel = "/" + resp.ContainerId + ".log"
	}
	path := filepath.Join(dir, rel)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err == nil {
		if f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640); err == nil {
			f.Close()
		}
	}
	rs := r.RuntimeService
	rs.Lock()
	if c, ok := rs.Containers[resp.ContainerId]; ok {
		c.LogPath = path
	}
	rs.Unlock()
	return resp, nil
}

func main() {
	log.SetOutput(os.Stderr)
	listen := flag.String("listen", "", "unix socket to serve CRI on (required), e.g. /run/fakecri/cri.sock")
	imageSize := flag.Uint64("image-size", 1<<20, "size in bytes reported for every fake image (must be non-zero)")
	logDir := flag.String("log-dir", "", "directory for container log files when the kubelet gives no absolute log directory (default: <socket dir>/container-logs)")
	flag.Parse()
	if *listen == "" || *imageSize == 0 {
		log.Fatal("fakecri: --listen is required and --image-size must be non-zero")
	}
	sock := *listen
	if *logDir == "" {
		*logDir = filepath.Join(filepath.Dir(sock), "container-logs")
	}
	if abs, err := filepath.Abs(*logDir); err == nil {
		*logDir = abs
	}

	f := fake.NewFakeRemoteRuntime()
	f.ImageService.SetFakeImageSize(*imageSize)
	f.RuntimeService.FakeStatus = &kubeapi.RuntimeStatus{Conditions: []*kubeapi.RuntimeCondition{
		{Type: kubeapi.RuntimeReady, Status: true},
		{Type: kubeapi.NetworkReady, Status: true},
	}}
	r := &runtime{RemoteRuntime: f, logDir: *logDir}

	srv := grpc.NewServer()
	kubeapi.RegisterRuntimeServiceServer(srv, r)
	kubeapi.RegisterImageServiceServer(srv, r)
	l, err := util.CreateListener("unix://" + sock)
	if err != nil {
		log.Fatalf("fakecri: %v", err)
	}
	// The fakes record every call forever; trim the records so a long run
	// does not grow without bound.
	go func() {
		for range time.Tick(time.Minute) {
			f.RuntimeService.Lock()
			f.RuntimeService.Called = f.RuntimeService.Called[:0]
			f.RuntimeService.Unlock()
			f.ImageService.Lock()
			f.ImageService.Called = f.ImageService.Called[:0]
			f.ImageService.Unlock()
		}
	}()

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		s := <-sig
		log.Printf("fakecri: %v, stopping", s)
		srv.Stop()
	}()
	log.Printf("fakecri: serving RuntimeService and ImageService on %s (image size %d, log dir %s)", sock, *imageSize, *logDir)
	if err := srv.Serve(l); err != nil {
		log.Printf("fakecri: serve: %v", err)
	}
	os.Remove(sock)
}
