#!/usr/bin/env bash
# Builds the real Kubernetes control plane (kube-apiserver, kube-controller-manager, kubectl)
# and etcd from the Go modules pinned in this directory's go.mod, and caches the binaries by
# version, and by what else decides the build (go.mod, go.sum, this script), outside the
# checkout. Prints the bin directory on stdout. A second call with the same inputs returns at
# once.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
k8s_version="$(cd "$here" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
etcd_version="$(cd "$here" && go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)"
cache_root="${TASKRUN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/taskrun}"
inputs="$(cat "$here/go.mod" "$here/go.sum" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-12)"
bin_dir="$cache_root/control-plane/$k8s_version-etcd-$etcd_version-$inputs/bin"

built() {
  [[ -x "$bin_dir/kube-apiserver" && -x "$bin_dir/kube-controller-manager" \
     && -x "$bin_dir/kubectl" && -x "$bin_dir/etcd" ]]
}
if built; then
  echo "$bin_dir"
  exit 0
fi
# Test binaries started in parallel on a fresh machine: one builds, the others wait for it.
mkdir -p "$cache_root/control-plane"
exec 9>"$cache_root/control-plane/.lock"
flock 9
if built; then
  echo "$bin_dir"
  exit 0
fi

echo "building Kubernetes $k8s_version and etcd $etcd_version into $bin_dir (once per machine; ~8-10 min cold on 2 cores)" >&2
mkdir -p "$bin_dir.partial"
minor="${k8s_version#v1.}"; minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
cd "$here"
for cmd in kube-apiserver kube-controller-manager kubectl; do
  echo "  go build $cmd" >&2
  go build -trimpath -ldflags "$ldflags" -o "$bin_dir.partial/$cmd" "k8s.io/kubernetes/cmd/$cmd"
done
echo "  go build etcd" >&2
go build -trimpath -ldflags "-s -w" -o "$bin_dir.partial/etcd" go.etcd.io/etcd/server/v3
rm -rf "$bin_dir"
mv "$bin_dir.partial" "$bin_dir"
echo "$bin_dir"
