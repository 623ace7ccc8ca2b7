# Basalt CSI driver image: basalt-csi built with cgo against Debian 12's
# librbd/librados (Ceph 16.2 Pacific, hence -tags pacific), on Debian 12 slim
# with the tools the node plugin runs.
#
# The two bases are arguments so that `make image` (deploy/image.sh) can
# build this file without Docker or a registry, on bases it makes from
# Debian packages; `docker build .` uses the public images below.
ARG GO_IMAGE=golang:1.26-bookworm
ARG BASE_IMAGE=debian:12-slim
FROM ${GO_IMAGE} AS build
# test/packages.txt is the one package list (roles: runtime, build, test).
COPY test/packages.txt /tmp/packages.txt
RUN apt-get update \
 && apt-get install -y --no-install-recommends $(awk '!/^#/ && / build/ {print $1}' /tmp/packages.txt) \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd cmd
COPY pkg pkg
ARG VERSION=dev
# -s -w: no symbol tables in the image (a quarter of the binary).
RUN CGO_ENABLED=1 go build -tags pacific -trimpath \
      -ldflags "-s -w -X main.version=${VERSION}" -o /out/basalt-csi ./cmd/basalt-csi

FROM ${BASE_IMAGE}
# The "runtime" packages: ceph-common (rbd CLI for krbd, librbd/librados),
# rbd-nbd, rbd-fuse + fuse (the other mappers), e2fsprogs, xfsprogs,
# util-linux (losetup, blkid), mount.
COPY test/packages.txt /tmp/packages.txt
RUN apt-get update \
 && apt-get install -y --no-install-recommends $(awk '!/^#/ && / runtime/ {print $1}' /tmp/packages.txt) \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /tmp/packages.txt
COPY --from=build /out/basalt-csi /usr/local/bin/basalt-csi
# The node plugin needs root (mount, losetup, /dev); the controller does not
# care. Kubernetes manifests set privileges per container.
ENTRYPOINT ["/usr/local/bin/basalt-csi"]
