# Sourced by hack/up.sh: starts taskrun-controller in the background against the dev cluster.
# Provided by up.sh: REPO_ROOT, DEV_DIR, KUBECONFIG, BIN_DIR, RUST_BIN_DIR and `start_bg NAME CMD...`.
# Pods never run on the dev cluster (no kubelet), so the image is only a name.
#
# CONTROLLER_HTTP_ADDR (127.0.0.1:8082: /healthz, /readyz, /metrics) is configurable. The Lease
# is in `default`: an installed controller holds its own in taskrun-system, so on a cluster of
# TASKRUN_EXTERNAL_KUBECONFIG with the operator installed the two would not coordinate.

CONTROLLER_HTTP_ADDR="${CONTROLLER_HTTP_ADDR:-127.0.0.1:8082}"

start_bg taskrun-controller \
  env KUBECONFIG="$KUBECONFIG" TASKRUN_LOG_LEVEL="${TASKRUN_LOG_LEVEL:-info}" \
  "$RUST_BIN_DIR/taskrun-controller" \
    --log-format=text \
    --http-addr="$CONTROLLER_HTTP_ADDR" \
    --lease-namespace=default \
    --image=busybox:1.36 \
    --command=sh --arg=-c --arg='ls "$CONTEXT_DIR" && cat "$CONTEXT_DIR"/*.md' \
    --backoff-limit=1 \
    --active-deadline-seconds=3600 \
    --ttl-seconds-after-finished=86400

# Ready when its probe answers (it also competes for the Lease, held at once on a fresh cluster).
for _ in $(seq 1 100); do
  if curl -fsS "http://$CONTROLLER_HTTP_ADDR/readyz" >/dev/null 2>&1; then
    break
  fi
  sleep 0.2
done
curl -fsS "http://$CONTROLLER_HTTP_ADDR/readyz" >/dev/null 2>&1 \
  || { echo "taskrun-controller did not become ready; see the logs under $DEV_DIR/logs" >&2; return 1; }
echo "taskrun-controller ready (metrics at http://$CONTROLLER_HTTP_ADDR/metrics)"
