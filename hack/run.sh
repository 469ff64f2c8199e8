#!/usr/bin/env bash
# make run: the stack of make up (or, when KUBECONFIG is set, that cluster plus the project's
# processes), the examples applied, their status streamed until Ctrl-C, then make down.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

# The dev cluster's own kubeconfig (a shell that sourced .dev/env) is no other cluster.
if [[ -n "${KUBECONFIG:-}" && "$KUBECONFIG" != "$DEV_DIR/kubeconfig" ]]; then
  export TASKRUN_EXTERNAL_KUBECONFIG="$KUBECONFIG"
fi
finish() {
  # On a cluster that outlives the stack, the examples go while the controller still runs
  # (their finalizer needs it), then make down takes the webhook registrations out.
  if [[ -n "${TASKRUN_EXTERNAL_KUBECONFIG:-}" ]]; then
    kubectl delete -f examples/ --ignore-not-found --wait --timeout=30s || true
  fi
  "$REPO_ROOT/hack/down.sh"
}
trap finish EXIT
"$REPO_ROOT/hack/up.sh"
# shellcheck source=/dev/null
source "$DEV_DIR/env"

# Server-side, as the examples ask: a run after `kubectl taskrun context add` keeps the files
# it added (a client-side apply replaces the whole list).
kubectl apply --server-side -f examples/
kubectl get taskruns -o wide
echo "streaming TaskRun status; Ctrl-C stops everything."
echo "(no kubelet runs here: start or finish a pod as one would, e.g."
echo "  kubectl patch pod NAME --subresource=status --type=merge -p '{\"status\":{\"phase\":\"Running\",\"conditions\":[{\"type\":\"Ready\",\"status\":\"True\"}]}}'"
echo "  kubectl patch pod NAME --subresource=status --type=merge -p '{\"status\":{\"phase\":\"Succeeded\"}}')"
# --watch lists first: a change between the get above and the watch is not lost. kubectl
# ends on Ctrl-C; the EXIT trap then runs make down.
kubectl get taskruns -o wide --watch || true
