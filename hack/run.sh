#!/usr/bin/env bash
# make run: the stack of make up (or, when KUBECONFIG is set, that cluster plus the project's
# processes), the examples applied, their status streamed until Ctrl-C, then make down.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

if [[ -n "${KUBECONFIG:-}" ]]; then
  export TASKRUN_EXTERNAL_KUBECONFIG="$KUBECONFIG"
fi
trap '"$REPO_ROOT/hack/down.sh"' EXIT
"$REPO_ROOT/hack/up.sh"
# shellcheck source=/dev/null
source "$DEV_DIR/env"

kubectl apply -f examples/
kubectl get taskruns -o wide
echo "streaming TaskRun status; Ctrl-C stops everything."
echo "(no kubelet runs here: finish a pod as one would, e.g."
echo "  kubectl patch pod NAME --subresource=status --type=merge -p '{\"status\":{\"phase\":\"Succeeded\"}}')"
# --watch lists first: a change between the get above and the watch is not lost. kubectl
# ends on Ctrl-C; the EXIT trap then runs make down.
kubectl get taskruns -o wide --watch || true
