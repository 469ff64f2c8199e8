#!/usr/bin/env bash
# Builds the main.go of a test tool directory (its module pinned in that directory's go.mod)
# and caches the binary outside the checkout, keyed by the pinned version of MODULE and by the
# sources. Prints the path of the binary on stdout; a second call with the same sources returns
# at once. Used by tests/kstatus and tests/fluxapply:
#
#   build-go-main.sh DIR MODULE NAME
set -euo pipefail

here="$1" module="$2" name="$3"
version="$(cd "$here" && go list -m -f '{{.Version}}' "$module")"
sources="$(cat "$here/main.go" "$here/go.mod" "$here/go.sum" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-12)"
cache_root="${TASKRUN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/taskrun}"
bin="$cache_root/$name/${module##*/}-$version-$sources/$name"

# One build at a time (parallel tests call this); a waiter then finds the result cached.
mkdir -p "$cache_root/$name"
exec 9>"$cache_root/$name/.lock"
flock 9

if [[ -x "$bin" ]]; then
  echo "$bin"
  exit 0
fi

echo "building $name ($module $version) into $bin (once per machine; a minute or two cold)" >&2
mkdir -p "$(dirname "$bin")"
cd "$here"
# -buildvcs=false: the main package is in this checkout, and stamping it with git's state
# fails where git is missing or the checkout belongs to another user.
go build -buildvcs=false -trimpath -ldflags "-s -w" -o "$bin.partial" .
mv "$bin.partial" "$bin"
echo "$bin"
