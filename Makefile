# Basalt — see README.md. Every target installs what it needs (idempotently).
SHELL      := /bin/bash
GO         ?= go
TAGS       := pacific
VERSION    ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS    := -X main.version=$(VERSION)
export PATH := $(PATH):/usr/local/go/bin
export GOFLAGS := -tags=$(TAGS)

.PHONY: all deps build run csc test unit integration sanity walkthrough e2e e2e-prep e2e-tools-early e2e-upstream lint clean bench bench-quick bench-k8s image

all: build

deps:
	@test/install-deps.sh

build: deps
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/basalt-csi ./cmd/basalt-csi

# Starts a local Ceph cluster with a golden image and serves on a unix socket.
run: build csc
	test/run-local.sh

# csc (dell/gocsi, pinned in test/tools/csc), cached in bin/csc.
csc:
	@test/build-csc.sh

lint:
	@out=$$(gofmt -l cmd pkg test); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# test/promrules (a module of its own) checks the alert rules with
# Prometheus' rule checker, as `promtool check rules` does.
unit:
	$(GO) test -race -count=1 ./pkg/... ./cmd/...
	cd test/promrules && $(GO) test -count=1 ./...

# Integration tests start their own Ceph clusters through test/ceph-cluster.sh.
# The full log (driver logs included) is kept in _output/integration.log.
integration: build
	@mkdir -p _output
	$(GO) test -count=1 -timeout 30m -v ./test/integration/... 2>&1 | tee _output/integration.log \
	  | grep -E '^(--- |PASS|FAIL|ok|panic)|^\s+\S+_test.go:[0-9]+: ' | grep -vE '_test.go:[0-9]+: time=' ; exit $${PIPESTATUS[0]}

# csi-sanity (csi-test v5.6.0) against a real driver and cluster, mount and block.
sanity: build
	@mkdir -p _output
	$(GO) test -count=1 -timeout 40m -v -run '^TestSanity$$' ./test/sanity/ 2>&1 | tee _output/sanity.log \
	  | grep -E '^sanity|^(--- |PASS|FAIL|ok|panic)|^\s+\S+_test.go:[0-9]+: ' ; exit $${PIPESTATUS[0]}

# The whole lifecycle with csc against a local cluster.
walkthrough: build csc
	examples/csc/walkthrough.sh

# The container image, from the Dockerfile, without Docker or a registry:
# an OCI archive (deploy/image.sh; bases made from Debian packages, cached).
image: deps
	deploy/image.sh _output/images/basalt-csi.tar

# Real Kubernetes (built from Go modules, cached by version) + Ceph + Basalt,
# with a focused part of Kubernetes' own storage suite (TestUpstreamStorage).
# In private mount, PID and network namespaces (catatonit is their init): the
# mounts of the kubelet, containerd and the node plugin's pods, the pod
# network and kube-proxy's rules go with them, and the suite's host-exec
# pods, which enter PID 1's mount namespace, enter ours. The tools and the
# test binary are built first, outside: the network namespace has no way out.
IN_PRIVATE_NS := unshare --mount --propagation private --pid --fork --mount-proc --net catatonit --
E2E_TEST      := _output/kubernetes-e2e.test
E2E_RUN       := env -C test/e2e/kubernetes $(IN_PRIVATE_NS) $(CURDIR)/$(E2E_TEST) -test.count=1 -test.v
E2E_FILTER    := grep -E '^e2e|^(--- |PASS|FAIL|ok|panic)|^\s+\S+_test.go:[0-9]+: '
# The suite part of the tools (e2e.test, ginkgo) builds in the background,
# outside the namespaces, while the e2e's own tests run; TestUpstreamStorage
# waits for it (build-tools.sh: one builder per part, the others wait).
e2e-prep: build image
	@mkdir -p _output
	GOFLAGS= test/e2e/kubernetes/build-tools.sh cluster >/dev/null
	@GOFLAGS= nohup nice -n 19 test/e2e/kubernetes/build-tools.sh suite >_output/build-tools-suite.log 2>&1 </dev/null &
	$(GO) test -c -o $(E2E_TEST) ./test/e2e/kubernetes/

e2e: e2e-prep
	$(E2E_RUN) -test.timeout 80m 2>&1 | tee _output/e2e.log | $(E2E_FILTER) ; exit $${PIPESTATUS[0]}

# All of Kubernetes' external storage suite that applies, on the same stack
# brought up the same way: `make e2e-upstream [TESTDRIVER=file] [FOCUS=regex]
# [SKIP=regex] [PROCS=n]` (test/e2e/testdriver.yaml by default; README, "Upstream
# storage suite").
e2e-upstream: e2e-prep
	BASALT_UPSTREAM_ALL=1 BASALT_UPSTREAM_TESTDRIVER="$(if $(TESTDRIVER),$(abspath $(TESTDRIVER)))" \
	  BASALT_UPSTREAM_FOCUS="$(FOCUS)" BASALT_UPSTREAM_SKIP="$(SKIP)" BASALT_UPSTREAM_PROCS="$(PROCS)" \
	  $(E2E_RUN) -test.timeout 7h -test.run '^TestUpstreamStorage$$' 2>&1 \
	  | tee _output/e2e-upstream.log | $(E2E_FILTER) ; exit $${PIPESTATUS[0]}

# The Kubernetes-scale benchmark on the e2e's stack: N PVCs from the golden
# image (Immediate binding), then pods on the first PODS of them; writes
# _output/bench-k8s.json (README, "Performance"). Not part of `make test`.
bench-k8s: e2e-prep
	BASALT_BENCH_K8S_N="$(or $(N),100)" BASALT_BENCH_K8S_PODS="$(PODS)" \
	  $(E2E_RUN) -test.timeout 60m -test.run '^TestKubernetesScale$$' 2>&1 \
	  | tee _output/bench-k8s.log | $(E2E_FILTER) ; exit $${PIPESTATUS[0]}

# On a cold machine the e2e's tools take about half an hour to build: that
# build starts first, in the background at the lowest CPU priority, and
# takes what the Ceph-bound tests before the e2e leave idle; e2e-prep's own
# build-tools.sh then waits for it (one builder per part and cache key) and
# finds the cache, or builds what is missing. Warm, it finds the cache at once.
e2e-tools-early: deps
	@mkdir -p _output
	@GOFLAGS= nohup nice -n 19 test/e2e/kubernetes/build-tools.sh >_output/build-tools.log 2>&1 </dev/null &

test: deps e2e-tools-early lint unit integration sanity walkthrough image e2e

clean:
	-test/ceph-cluster.sh stop-all
	rm -rf bin _output

# Performance: Basalt against raw librbd and a shell baseline on its own local
# cluster; prints a table, writes _output/bench/{results.json,latency.svg}.
bench: build
	$(GO) run ./test/bench $(BENCH_ARGS)

bench-quick: build
	$(GO) run ./test/bench -quick $(BENCH_ARGS)
