#!/usr/bin/env bash
# make down: takes out the webhook registrations made on a cluster of KUBECONFIG, then stops
# every process named in .dev/pids/*.pid (what make up and hack/up.d started), the control
# plane last. Logs stay in .dev/logs/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Registrations made on a cluster of KUBECONFIG (hack/up.d/20-webhook.sh), if they still
# point at this stack's webhook.
if [[ -f "$DEV_DIR/webhook-registered" ]]; then
  # shellcheck source=/dev/null
  source "$DEV_DIR/webhook-registered"
  bin_dir="$(control_plane_bin_dir)"
  kube() { "$bin_dir/kubectl" --kubeconfig="${registered_kubeconfig:?}" "$@"; }
  for kind in validatingwebhookconfiguration mutatingwebhookconfiguration; do
    url="$(kube get "$kind" taskrun-webhook -o 'jsonpath={.webhooks[0].clientConfig.url}' \
      2>/dev/null || true)"
    if [[ -n "$url" && "$url" == "${registered_url:?}"/* ]]; then
      kube delete "$kind" taskrun-webhook \
        || echo "could not delete $kind taskrun-webhook: delete it by hand" >&2
    fi
  done
  rm -f "$DEV_DIR/webhook-registered"
fi

shopt -s nullglob
for pid_file in "$DEV_DIR"/pids/*.pid; do
  name="$(basename "$pid_file" .pid)"
  [[ "$name" == cluster ]] || stop_pid "$name"
done
stop_pid cluster
rm -f "$DEV_DIR/cluster.ready"
echo "down"
