#!/usr/bin/env bash
# make up: builds the Rust binaries, starts the control plane (etcd, kube-apiserver,
# kube-controller-manager, TaskRun CRD) in the background unless TASKRUN_EXTERNAL_KUBECONFIG
# names a cluster to use instead, then sources hack/up.d/*.sh (webhook, controller, ...).
# Writes .dev/env; logs in .dev/logs/, pids in .dev/pids/. Idempotent: what runs is kept.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

echo "building the Rust binaries (cargo build --workspace --bins)"
cargo build --workspace --bins --locked --quiet
BIN_DIR="$(control_plane_bin_dir)"
export BIN_DIR

if [[ -n "${TASKRUN_EXTERNAL_KUBECONFIG:-}" ]]; then
  KUBECONFIG="$TASKRUN_EXTERNAL_KUBECONFIG"
  export KUBECONFIG
  echo "using the cluster of KUBECONFIG=$KUBECONFIG; installing the CRD"
  "$BIN_DIR/kubectl" apply --server-side --force-conflicts --field-manager=taskrun-dev \
    -f manifests/crd/taskruns.orchestrator.io.yaml
  "$BIN_DIR/kubectl" wait --for=condition=Established --timeout=60s \
    crd/taskruns.orchestrator.io
else
  KUBECONFIG="$DEV_DIR/kubeconfig"
  export KUBECONFIG
  echo "starting the control plane"
  # A marker left by a killed cluster must not pass for readiness of the new one.
  pid_alive cluster || rm -f "$DEV_DIR/cluster.ready"
  start_bg cluster env TASKRUN_CONTROL_PLANE_BIN="$BIN_DIR" \
    "$RUST_BIN_DIR/taskrun-devcluster" --dir "$DEV_DIR"
  for _ in $(seq 1200); do
    [[ -f "$DEV_DIR/cluster.ready" ]] && break
    if ! pid_alive cluster; then
      echo "the control plane exited during startup" >&2
      log_tail cluster
      exit 1
    fi
    sleep 0.1
  done
  if [[ ! -f "$DEV_DIR/cluster.ready" ]]; then
    echo "the control plane was not ready after 120 s" >&2
    log_tail cluster
    exit 1
  fi
  echo "  control plane ready at $(<"$DEV_DIR/cluster.ready")"
fi

# Written afresh each time; hack/up.d scripts append their lines again.
{
  echo "export KUBECONFIG='$KUBECONFIG'"
  echo "export PATH='$BIN_DIR:$RUST_BIN_DIR':\"\$PATH\""
} >"$DEV_DIR/env"

shopt -s nullglob
for part in "$REPO_ROOT"/hack/up.d/*.sh; do
  echo "up.d/$(basename "$part")"
  # shellcheck source=/dev/null
  source "$part"
done

echo "ready: source .dev/env   (then: kubectl get tr -A; make down stops everything)"
