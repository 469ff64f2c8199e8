# Sourced by hack/up.sh: starts taskrun-webhook in the background with a dev certificate
# (written once into .dev/certs by taskrun-certs) and registers it with the API server by URL,
# the dev CA as caBundle, so every kubectl apply of a TaskRun goes through it.
# Provided by up.sh: REPO_ROOT, DEV_DIR, KUBECONFIG, BIN_DIR, RUST_BIN_DIR, start_bg, append_env.
#
# WEBHOOK_PORT (8443), WEBHOOK_METRICS_ADDR (127.0.0.1:9443) and WEBHOOK_HOST (127.0.0.1: the
# address the API server calls; set it to an address of this machine that a remote cluster's
# API server can reach) are configurable; WEBHOOK_REGISTER=0 starts it without registering.

WEBHOOK_HOST="${WEBHOOK_HOST:-127.0.0.1}"
WEBHOOK_PORT="${WEBHOOK_PORT:-8443}"
WEBHOOK_METRICS_ADDR="${WEBHOOK_METRICS_ADDR:-127.0.0.1:9443}"
WEBHOOK_CERTS="$DEV_DIR/certs"
WEBHOOK_URL="https://$WEBHOOK_HOST:$WEBHOOK_PORT"
if [[ "$WEBHOOK_HOST" == 127.0.0.1 ]]; then webhook_listen=127.0.0.1; else webhook_listen=0.0.0.0; fi

# Made again when WEBHOOK_HOST changed: the API server calls that name. `localhost` is always
# in it, for the readiness check below.
if [[ ! -f "$WEBHOOK_CERTS/tls.crt" || ! -f "$WEBHOOK_CERTS/tls.key" || ! -f "$WEBHOOK_CERTS/ca.crt" \
      || "$(cat "$WEBHOOK_CERTS/host" 2>/dev/null)" != "$WEBHOOK_HOST" ]]; then
  "$RUST_BIN_DIR/taskrun-certs" --out "$WEBHOOK_CERTS" --host "$WEBHOOK_HOST" --host localhost
  echo "$WEBHOOK_HOST" >"$WEBHOOK_CERTS/host"
fi

start_bg taskrun-webhook \
  env KUBECONFIG="$KUBECONFIG" \
  "$RUST_BIN_DIR/taskrun-webhook" \
    --listen="$webhook_listen:$WEBHOOK_PORT" \
    --metrics-listen="$WEBHOOK_METRICS_ADDR" \
    --cert-dir="$WEBHOOK_CERTS" \
    --shutdown-delay=0s \
    --log-format=text \
    --log-level="${WEBHOOK_LOG_LEVEL:-info}"

# Ready: certificate loaded and TaskRun index synced.
webhook_ready() {
  curl -fsS --cacert "$WEBHOOK_CERTS/ca.crt" --resolve "localhost:$WEBHOOK_PORT:127.0.0.1" \
    "https://localhost:$WEBHOOK_PORT/readyz" >/dev/null 2>&1
}
for _ in $(seq 1 150); do
  webhook_ready && break
  pid_alive taskrun-webhook || break
  sleep 0.2
done
if ! webhook_ready; then
  echo "taskrun-webhook did not become ready" >&2
  log_tail taskrun-webhook
  return 1
fi

append_env "export WEBHOOK_URL=$WEBHOOK_URL"
append_env "export WEBHOOK_CA=$WEBHOOK_CERTS/ca.crt"

if [[ "${WEBHOOK_REGISTER:-1}" == 0 ]]; then
  echo "taskrun-webhook ready at $WEBHOOK_URL (not registered: WEBHOOK_REGISTER=0)"
  return 0
fi

webhook_ca_bundle="$(base64 -w0 <"$WEBHOOK_CERTS/ca.crt")"
# As manifests/base/webhook-configurations.yaml, but by URL, and without its
# `not-the-controller` matchCondition: the dev controller runs as the kubeconfig's user, the
# one kubectl uses too, so leaving that user out would leave the user's own writes unjudged.
webhook_entry() { # NAME PATH
  cat <<YAML
  - name: $1
    admissionReviewVersions: ["v1"]
    sideEffects: None
    failurePolicy: Fail
    matchPolicy: Equivalent
    timeoutSeconds: 5
    clientConfig:
      url: $WEBHOOK_URL$2
      caBundle: $webhook_ca_bundle
    rules:
      - apiGroups: ["orchestrator.io"]
        apiVersions: ["v1"]
        operations: ["CREATE", "UPDATE"]
        resources: ["taskruns"]
        scope: Namespaced
    matchConditions:
      - name: not-being-deleted
        expression: "request.operation != 'UPDATE' || !has(oldObject.metadata.deletionTimestamp)"
YAML
}
{
  echo "apiVersion: admissionregistration.k8s.io/v1"
  echo "kind: ValidatingWebhookConfiguration"
  echo "metadata: {name: taskrun-webhook}"
  echo "webhooks:"
  webhook_entry validate.taskruns.orchestrator.io /validate
  echo "---"
  echo "apiVersion: admissionregistration.k8s.io/v1"
  echo "kind: MutatingWebhookConfiguration"
  echo "metadata: {name: taskrun-webhook}"
  echo "webhooks:"
  webhook_entry mutate.taskruns.orchestrator.io /mutate
  echo "    reinvocationPolicy: IfNeeded"
} | "$BIN_DIR/kubectl" apply --server-side --force-conflicts --field-manager=taskrun-dev -f - >/dev/null
# On a cluster that outlives the stack, make down takes the registrations out again: left
# behind, they would refuse every TaskRun write (failurePolicy: Fail, nobody answering).
if [[ -n "${TASKRUN_EXTERNAL_KUBECONFIG:-}" ]]; then
  printf 'registered_kubeconfig=%q\nregistered_url=%q\n' "$KUBECONFIG" "$WEBHOOK_URL" \
    >"$DEV_DIR/webhook-registered"
fi

# The API server picks registrations up asynchronously: wait until a dry-run create comes
# back labelled by the mutating webhook.
webhook_probe='{"apiVersion":"orchestrator.io/v1","kind":"TaskRun","metadata":{"name":"webhook-probe","namespace":"default"},"spec":{"taskId":1,"serviceName":"probe","markdownFiles":[{"filename":"task.md","content":"probe"}]}}'
webhook_registered=""
for _ in $(seq 1 100); do
  if [[ "$(echo "$webhook_probe" | "$BIN_DIR/kubectl" create --dry-run=server -f - \
        -o 'jsonpath={.metadata.labels.orchestrator\.io/task-id}' 2>/dev/null)" == 1 ]]; then
    webhook_registered=yes
    break
  fi
  sleep 0.2
done
if [[ -z "$webhook_registered" ]]; then
  echo "the API server does not call taskrun-webhook at $WEBHOOK_URL" >&2
  log_tail taskrun-webhook
  return 1
fi
echo "taskrun-webhook ready and registered at $WEBHOOK_URL (metrics at http://$WEBHOOK_METRICS_ADDR/metrics)"
