#!/usr/bin/env bash
# Builds fluxapply (main.go, on github.com/fluxcd/pkg/ssa pinned in go.mod) and caches it
# by version outside the checkout. Prints the path of the binary on stdout. A second call
# with the same sources returns at once.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(cd "$here" && go list -m -f '{{.Version}}' github.com/fluxcd/pkg/ssa)"
sources="$(cat "$here/main.go" "$here/go.sum" | sha256sum | cut -c1-12)"
cache_root="${TASKRUN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/taskrun}"
bin="$cache_root/fluxapply/ssa-$version-$sources/fluxapply"

# One build at a time (parallel tests call this); a waiter then finds the result cached.
mkdir -p "$cache_root/fluxapply"
exec 9>"$cache_root/fluxapply/.lock"
flock 9

if [[ -x "$bin" ]]; then
  echo "$bin"
  exit 0
fi

echo "building fluxapply (fluxcd/pkg/ssa $version) into $bin (once per machine; a minute or two cold)" >&2
mkdir -p "$(dirname "$bin")"
cd "$here"
go build -trimpath -ldflags "-s -w" -o "$bin.partial" .
mv "$bin.partial" "$bin"
echo "$bin"
