#!/usr/bin/env bash
# Builds the helm CLI from the helm.sh/helm/v3 module pinned in this directory's go.mod and
# caches it by version and by what else decides the build (go.mod, go.sum, this script)
# outside the checkout (like tests/cluster/build.sh). Prints the path of the helm binary on
# stdout. A second call with the same inputs returns at once.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(cd "$here" && go list -m -f '{{.Version}}' helm.sh/helm/v3)"
cache_root="${TASKRUN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/taskrun}"
inputs="$(cat "$here/go.mod" "$here/go.sum" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-12)"
bin="$cache_root/helm/$version-$inputs/helm"

if [[ -x "$bin" ]]; then
  echo "$bin"
  exit 0
fi

# One build at a time (`make helm` and a test may race); a waiter then finds the result cached.
mkdir -p "$cache_root/helm"
exec 9>"$cache_root/helm/.lock"
flock 9
if [[ -x "$bin" ]]; then
  echo "$bin"
  exit 0
fi

echo "building helm $version into $bin (once per machine; a few minutes cold)" >&2
mkdir -p "$(dirname "$bin")"
cd "$here"
# Without the version stamp `helm version` says v3.x-unreleased; charts do not care, people do.
go build -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$version" \
  -o "$bin.partial" helm.sh/helm/v3/cmd/helm
mv "$bin.partial" "$bin"
echo "$bin"
