#!/usr/bin/env bash
# Build the csc CSI command-line client (github.com/dell/gocsi/csc) into
# <repo>/bin/csc, using the versions pinned in test/tools/csc/go.mod + go.sum.
# No-op (silent) when bin/csc exists and bin/.csc-version matches the pins.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$script_dir")"
mod_dir="$script_dir/tools/csc"
bin_dir="$repo/bin"
out="$bin_dir/csc"
stamp="$bin_dir/.csc-version"

# Pinned version string, derived from the tool module's go.mod so that bumping
# a pin there invalidates the cached binary.
modver() {
	awk -v m="$1" '$1 == m { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' \
		"$mod_dir/go.mod"
}
gocsi_ver="$(modver github.com/dell/gocsi)"
spec_ver="$(modver github.com/container-storage-interface/spec)"
if [[ -z "$gocsi_ver" || -z "$spec_ver" ]]; then
	echo "build-csc: cannot read pinned versions from $mod_dir/go.mod" >&2
	exit 1
fi
version="gocsi=$gocsi_ver spec=$spec_ver"

if [[ -x "$out" && -f "$stamp" && "$(cat "$stamp")" == "$version" ]]; then
	exit 0
fi

mkdir -p "$bin_dir"
log="$(mktemp)"
tmp_out="$(mktemp "$bin_dir/.csc.XXXXXX")"
trap 'rm -f "$log" "$tmp_out"' EXIT

# Clear GOFLAGS (the Makefile exports -tags=...) and ignore any go.work so
# only the pinned tool module is used. -mod=readonly: go.mod/go.sum are
# committed and must not be rewritten; missing modules are still downloaded.
if ! (cd "$mod_dir" && GOFLAGS= GOWORK=off CGO_ENABLED=0 \
	go build -mod=readonly -trimpath -buildvcs=false -o "$tmp_out" \
	github.com/dell/gocsi/csc) >"$log" 2>&1; then
	cat "$log" >&2
	echo "build-csc: building csc ($version) failed" >&2
	exit 1
fi

chmod 0755 "$tmp_out"
mv -f "$tmp_out" "$out"
printf '%s\n' "$version" >"$stamp"
echo "build-csc: built bin/csc ($version)"
