#!/usr/bin/env bash
# Builds cert-manager's controller and cainjector from the github.com/cert-manager/cert-manager
# module pinned in this directory's go.mod (through our own small mains in cmd/, since
# upstream's main packages live in modules the Go module proxy does not serve), and caches
# them, with the module's CRDs (deploy/crds), by version outside the checkout. Prints the
# cache directory (bin/cert-manager-controller, bin/cert-manager-cainjector, crds/*.yaml) on
# stdout. A second call with the same version returns at once.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(cd "$here" && go list -m -f '{{.Version}}' github.com/cert-manager/cert-manager)"
cache_root="${TASKRUN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/taskrun}"
# The mains are part of what is built: a change to them gets a new cache entry.
mains="$(cat "$here"/cmd/*/main.go "$here/go.mod" "$here/go.sum" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-12)"
out="$cache_root/cert-manager/$version-$mains"

# One build at a time (parallel tests call this); a waiter then finds the result cached.
mkdir -p "$cache_root/cert-manager"
exec 9>"$cache_root/cert-manager/.lock"
flock 9

if [[ -x "$out/bin/cert-manager-controller" && -x "$out/bin/cert-manager-cainjector" \
      && -f "$out/crds/cert-manager.io_certificates.yaml" ]]; then
  echo "$out"
  exit 0
fi

cd "$here"
if [[ ! -x "$out/bin/cert-manager-controller" || ! -x "$out/bin/cert-manager-cainjector" ]]; then
  echo "building cert-manager $version into $out (once per machine; ~3 min cold on 2 cores)" >&2
  mkdir -p "$out/bin.partial"
  ldflags="-s -w -X github.com/cert-manager/cert-manager/pkg/util.AppVersion=$version"
  for cmd in controller cainjector; do
    echo "  go build cert-manager-$cmd" >&2
    # The mains are in this checkout: no git stamp (see tests/build-go-main.sh).
    go build -buildvcs=false -trimpath -ldflags "$ldflags" -o "$out/bin.partial/cert-manager-$cmd" "./cmd/$cmd"
  done
  rm -rf "$out/bin"
  mv "$out/bin.partial" "$out/bin"
fi
module_dir="$(go list -m -f '{{.Dir}}' github.com/cert-manager/cert-manager)"
rm -rf "$out/crds.partial"
mkdir -p "$out/crds.partial"
cp "$module_dir"/deploy/crds/*.yaml "$out/crds.partial/"
chmod u+w "$out"/crds.partial/*.yaml
rm -rf "$out/crds"
mv "$out/crds.partial" "$out/crds"
echo "$out"
