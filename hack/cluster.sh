#!/usr/bin/env bash
# make cluster: the control plane alone (etcd, kube-apiserver, kube-controller-manager, the
# TaskRun CRD), in the foreground until Ctrl-C. State in .dev/, as with make up.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

if pid_alive cluster; then
  echo "make up already runs a control plane (pid $(<"$DEV_DIR/pids/cluster.pid")); make down first" >&2
  exit 1
fi
cargo build --locked --quiet -p taskrun-tests --bin taskrun-devcluster
BIN_DIR="$(control_plane_bin_dir)"
echo "in another shell: export KUBECONFIG=$DEV_DIR/kubeconfig PATH=$BIN_DIR:\$PATH"
echo "component logs: $DEV_DIR/logs/{etcd,kube-apiserver,kube-controller-manager}.log"
TASKRUN_CONTROL_PLANE_BIN="$BIN_DIR" exec "$RUST_BIN_DIR/taskrun-devcluster" --dir "$DEV_DIR"
