#!/usr/bin/env bash
# Installs what building, running and testing Basalt need on Debian 12:
# Ceph 16.2 (Pacific) daemons and client libraries, rbd-fuse/rbd-nbd for the
# node mappers, filesystem tools, and the C toolchain cgo needs. Idempotent:
# it installs only what is missing and prints nothing when all is there.
set -euo pipefail

mapfile -t packages < <(awk '!/^#/ && NF {print $1}' "$(dirname "$0")/packages.txt")
missing=()
for p in "${packages[@]}"; do
  # fuse3 Breaks/Replaces fuse and still provides what rbd-fuse needs.
  if [ "$p" = fuse ] && dpkg-query -W -f='${Status}' fuse3 2>/dev/null | grep "install ok installed" >/dev/null; then
    continue
  fi
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep "install ok installed" >/dev/null; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

if ! command -v go >/dev/null 2>&1; then
  if [ -x /usr/local/go/bin/go ]; then
    echo "note: add /usr/local/go/bin to PATH" >&2
  else
    echo "Go is missing: install Go >= 1.25 (https://go.dev/dl) and re-run" >&2
    exit 1
  fi
fi
