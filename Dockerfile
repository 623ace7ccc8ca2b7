# Basalt CSI driver image: basalt-csi built with cgo against Debian 12's
# librbd/librados (Ceph 16.2 Pacific, hence -tags pacific), on Debian 12 slim
# with the tools the node plugin runs.
FROM golang:1.26-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends librbd-dev librados-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd cmd
COPY pkg pkg
ARG VERSION=dev
RUN CGO_ENABLED=1 go build -tags pacific -trimpath \
      -ldflags "-X main.version=${VERSION}" -o /out/basalt-csi ./cmd/basalt-csi

FROM debian:12-slim
# ceph-common: rbd CLI (krbd mapper) and librbd/librados at runtime;
# rbd-nbd, rbd-fuse + fuse: the other mappers; the rest: mkfs, resize, mount.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ceph-common rbd-nbd rbd-fuse fuse e2fsprogs xfsprogs util-linux mount \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/basalt-csi /usr/local/bin/basalt-csi
# The node plugin needs root (mount, losetup, /dev); the controller does not
# care. Kubernetes manifests set privileges per container.
ENTRYPOINT ["/usr/local/bin/basalt-csi"]
