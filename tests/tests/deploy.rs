//! The deployment manifests against the real control plane: every overlay builds, the
//! self-signed overlay passes a server-side dry-run, the Deployments' own flags start the
//! binaries under their ServiceAccounts, the RBAC is exactly what DESIGN needs, and the Argo
//! CD health check passes its Lua tests. (The other integration tests run the webhook and the
//! controller under the same identities and RBAC: see `taskrun_tests::identity`.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use taskrun_certs::Ca;
use taskrun_tests::identity::{
    self, CONTROLLER_SERVICE_ACCOUNT, SYSTEM_NAMESPACE, WEBHOOK_SERVICE_ACCOUNT,
};
use taskrun_tests::{ControlPlane, http_get, repo_root, spawn_logged, wait_for, workspace_bin};

const WAIT: Duration = Duration::from_secs(60);

fn build(cp: &ControlPlane, dir: &str) -> Vec<Value> {
    identity::kustomize(cp, dir).unwrap_or_else(|e| panic!("{e}"))
}

fn kinds(objects: &[Value]) -> BTreeSet<String> {
    objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name_prefix: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| {
            o["kind"] == kind
                && o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(name_prefix))
        })
        .unwrap_or_else(|| panic!("no {kind} {name_prefix}* in the build"))
}

/// A copy of `manifests/` in a temporary directory (kept while the first is held), to change
/// and build without touching the repository.
fn copy_of_manifests() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let copy = tmp.path().join("manifests");
    let status = Command::new("cp")
        .arg("-r")
        .arg(repo_root().join("manifests"))
        .arg(&copy)
        .status()
        .unwrap_or_else(|e| panic!("cp: {e}"));
    assert!(status.success(), "cp -r manifests failed");
    (tmp, copy)
}

/// A copy of `manifests/` with a certificate from `taskrun-certs` in the self-signed overlay
/// (never written into the repository), built.
fn build_self_signed(cp: &ControlPlane) -> (tempfile::TempDir, String) {
    let (tmp, copy) = copy_of_manifests();
    let overlay = copy.join("overlays/self-signed");
    let out = Command::new(workspace_bin("taskrun-certs"))
        .arg(format!("--out={}", overlay.join("certs").display()))
        .args([
            "--host=taskrun-webhook.taskrun-system.svc",
            "--host=taskrun-webhook.taskrun-system.svc.cluster.local",
        ])
        .output()
        .unwrap_or_else(|e| panic!("taskrun-certs: {e}"));
    assert!(
        out.status.success(),
        "taskrun-certs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built = cp
        .kubectl()
        .arg("kustomize")
        .arg(&overlay)
        .output()
        .unwrap_or_else(|e| panic!("kubectl kustomize: {e}"));
    assert!(
        built.status.success(),
        "kubectl kustomize overlays/self-signed failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    (tmp, String::from_utf8_lossy(&built.stdout).into_owned())
}

/// An object's Argo CD sync wave (0 unless annotated).
/// A Deployment's container args, parsed as its binary parses them.
fn flags_of<F: clap::Parser>(deployment: &Value) -> F {
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str);
    F::try_parse_from(std::iter::once("binary").chain(args))
        .unwrap_or_else(|e| panic!("the Deployment's args do not parse: {e}"))
}

fn wave(object: &Value) -> i64 {
    object["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]
        .as_str()
        .map_or(0, |w| w.parse().unwrap_or_else(|e| panic!("wave {w}: {e}")))
}

/// Argo CD applies a wave only once the one before is healthy: every Secret, ConfigMap and
/// ServiceAccount a Deployment needs, when the build holds it, must come no later.
fn assert_waves_in_order(objects: &[Value]) {
    for deployment in objects.iter().filter(|o| o["kind"] == "Deployment") {
        let pod = &deployment["spec"]["template"]["spec"];
        let mut needs = vec![("ServiceAccount", &pod["serviceAccountName"])];
        for volume in pod["volumes"].as_array().into_iter().flatten() {
            needs.push(("Secret", &volume["secret"]["secretName"]));
            needs.push(("ConfigMap", &volume["configMap"]["name"]));
        }
        for (kind, name) in needs.into_iter().filter(|(_, name)| name.is_string()) {
            let Some(needed) = objects
                .iter()
                .find(|o| o["kind"] == kind && o["metadata"]["name"] == *name)
            else {
                continue; // made in the cluster (cert-manager's Secret)
            };
            assert!(
                wave(needed) <= wave(deployment),
                "{kind} {name} (wave {}) comes after the Deployment {} (wave {}) that mounts it",
                wave(needed),
                deployment["metadata"]["name"],
                wave(deployment)
            );
        }
    }
}

/// The base's patches add their Argo CD and Flux annotations key by key: an annotation
/// written on an object in the base (a workload identity on a ServiceAccount, say) is kept.
#[test]
fn annotations_written_in_the_base_are_kept_beside_the_sync_annotations() {
    let cp = ControlPlane::shared();
    let (_tmp, copy) = copy_of_manifests();
    for file in ["base/namespace.yaml", "crd/taskruns.orchestrator.io.yaml"] {
        let path = copy.join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        let annotated = text.replacen(
            "\nmetadata:\n",
            "\nmetadata:\n  annotations:\n    example.com/kept: \"yes\"\n",
            1,
        );
        assert_ne!(annotated, text, "{file} has no top-level metadata");
        std::fs::write(&path, annotated).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    let objects = identity::kustomize(cp, &copy.join("base").to_string_lossy())
        .unwrap_or_else(|e| panic!("{e}"));
    for (kind, name) in [
        ("Namespace", "taskrun-system"),
        ("CustomResourceDefinition", "taskruns.orchestrator.io"),
    ] {
        let annotations = &find(&objects, kind, name)["metadata"]["annotations"];
        assert_eq!(
            annotations["example.com/kept"], "yes",
            "{kind}: {annotations}"
        );
        assert!(
            annotations["argocd.argoproj.io/sync-wave"].is_string(),
            "{kind}: {annotations}"
        );
    }
}

#[test]
fn every_overlay_builds() {
    let cp = ControlPlane::shared();
    let base = build(cp, "manifests/base");
    let expected: BTreeSet<String> = [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "CustomResourceDefinition",
        "Deployment",
        "MutatingWebhookConfiguration",
        "Namespace",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
        "ValidatingWebhookConfiguration",
    ]
    .map(String::from)
    .into();
    assert_eq!(kinds(&base), expected);
    assert_waves_in_order(&base);
    // Neither GitOps tool prunes or deletes the CRD, which would delete every TaskRun.
    let crd = &find(&base, "CustomResourceDefinition", "taskruns.")["metadata"]["annotations"];
    assert_eq!(
        crd["argocd.argoproj.io/sync-options"], "Prune=false,Delete=false",
        "{crd}"
    );
    assert_eq!(
        crd["kustomize.toolkit.fluxcd.io/prune"], "disabled",
        "{crd}"
    );
    // A review waiting for room to read its body is answered ("retry shortly") before the
    // API server stops waiting for it.
    let webhook = find(&base, "Deployment", "taskrun-webhook");
    // Its two replicas never share a node (a node loss would block every TaskRun write).
    let spread = &webhook["spec"]["template"]["spec"]["topologySpreadConstraints"][0];
    assert_eq!(
        (
            &spread["topologyKey"],
            &spread["whenUnsatisfiable"],
            &spread["maxSkew"]
        ),
        (
            &json!("kubernetes.io/hostname"),
            &json!("DoNotSchedule"),
            &json!(1)
        ),
        "{spread}"
    );
    assert_eq!(
        spread["labelSelector"]["matchLabels"],
        webhook["spec"]["selector"]["matchLabels"]
    );
    // Per ReplicaSet: during a rollout the old pods do not decide where the new ones go.
    assert_eq!(spread["matchLabelKeys"], json!(["pod-template-hash"]));
    // The kubelet's SIGKILL comes after everything the webhook may still do after SIGTERM,
    // with the Deployment's flags: answering during the delay, finishing in-flight requests,
    // blocking work.
    let flags: taskrun_webhook::config::Config = flags_of(webhook);
    let after_sigterm =
        flags.shutdown_delay + flags.shutdown_timeout + taskrun_webhook::server::BLOCKING_GRACE;
    let grace = webhook["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap_or(30);
    assert!(
        Duration::from_secs(grace) >= after_sigterm + Duration::from_secs(5),
        "terminationGracePeriodSeconds {grace} leaves no margin over {after_sigterm:?}"
    );
    let body_wait: u64 = webhook["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|a| {
            a.as_str()?
                .strip_prefix("--body-read-timeout=")?
                .strip_suffix('s')?
                .parse()
                .ok()
        })
        .expect("--body-read-timeout=<seconds>s in the webhook's args");
    for kind in [
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
    ] {
        let config = find(&base, kind, "taskrun-webhook");
        for hook in config["webhooks"].as_array().into_iter().flatten() {
            assert!(
                hook["clientConfig"].get("caBundle").is_none(),
                "no caBundle in git: {hook}"
            );
            assert!(
                hook["timeoutSeconds"].as_u64() > Some(body_wait),
                "the API server gives up before the webhook's {body_wait}s body wait: {hook}"
            );
        }
    }
    // A drain evicts pods that are not ready even when the budget is not met: they serve
    // nothing, and otherwise two unready replicas hang every drain of their nodes.
    let budgets: Vec<_> = base
        .iter()
        .filter(|o| o["kind"] == "PodDisruptionBudget")
        .collect();
    assert_eq!(budgets.len(), 2, "one PodDisruptionBudget per Deployment");
    for budget in budgets {
        assert_eq!(
            budget["spec"]["unhealthyPodEvictionPolicy"], "AlwaysAllow",
            "{budget}"
        );
    }
    // The controller mounts the generated Job template (its name carries a content hash).
    let template = find(&base, "ConfigMap", "taskrun-controller-job-template");
    let controller = find(&base, "Deployment", "taskrun-controller");
    assert_eq!(
        controller["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"],
        template["metadata"]["name"]
    );
    // Its SIGKILL comes after all a leader does after SIGTERM with the Deployment's flags, the
    // release of the Lease last (README: 10 s plus --lease-grace-seconds).
    let flags: taskrun_controller::config::Args = flags_of(controller);
    let after_sigterm = taskrun_controller::controller::longest_shutdown(&flags);
    let grace = controller["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap_or(30);
    assert!(
        Duration::from_secs(grace) >= after_sigterm + Duration::from_secs(5),
        "the controller's terminationGracePeriodSeconds {grace} leaves no margin over {after_sigterm:?}"
    );

    let cert_manager = build(cp, "manifests/overlays/cert-manager");
    assert!(kinds(&cert_manager).is_superset(&expected));
    assert_waves_in_order(&cert_manager);
    assert_eq!(
        cert_manager
            .iter()
            .filter(|o| o["kind"] == "Certificate")
            .count(),
        2
    );
    for kind in [
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
    ] {
        let config = find(&cert_manager, kind, "taskrun-webhook");
        assert_eq!(
            config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            "taskrun-system/taskrun-webhook-tls",
            "{kind}"
        );
    }

    let (_tmp, yaml) = build_self_signed(cp);
    let self_signed = identity::parse_documents(&yaml).unwrap_or_else(|e| panic!("{e}"));
    assert_waves_in_order(&self_signed);
    let secret = find(&self_signed, "Secret", "taskrun-webhook-tls");
    let ca = secret["data"]["ca.crt"]
        .as_str()
        .expect("ca.crt in the Secret");
    for kind in [
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
    ] {
        let config = find(&self_signed, kind, "taskrun-webhook");
        for hook in config["webhooks"].as_array().into_iter().flatten() {
            assert_eq!(hook["clientConfig"]["caBundle"], ca, "{kind}");
        }
    }
}

#[test]
fn the_self_signed_overlay_passes_a_server_side_dry_run() {
    let cp = ControlPlane::shared();
    let (_tmp, yaml) = build_self_signed(cp);
    // A dry-run create of the Namespace persists nothing, so the namespaced objects after it
    // would find no namespace: create it first, as an operator's earlier sync would have.
    identity::apply_rbac(cp);
    let out = identity::kubectl_stdin(cp, &["apply", "--dry-run=server", "-f", "-"], &yaml);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl apply --dry-run=server of overlays/self-signed failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for object in [
        "deployment.apps/taskrun-webhook",
        "deployment.apps/taskrun-controller",
        "secret/taskrun-webhook-tls",
        "validatingwebhookconfiguration.admissionregistration.k8s.io/taskrun-webhook",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/taskrun-webhook",
        "poddisruptionbudget.policy/taskrun-webhook",
        "poddisruptionbudget.policy/taskrun-controller",
    ] {
        assert!(
            stdout.contains(&format!("{object} ")) && stdout.contains("(server dry run)"),
            "{object} missing from:\n{stdout}"
        );
    }
}

/// Rules as `kubectl auth can-i --list` prints them: resource (or non-resource URL) to verbs.
type Rules = BTreeMap<String, BTreeSet<String>>;

fn can_i_list(cp: &ControlPlane, user: &str, namespace: &str) -> Rules {
    let mut args = vec![
        "auth".to_owned(),
        "can-i".to_owned(),
        "--list".to_owned(),
        format!("--namespace={namespace}"),
        format!("--as={user}"),
    ];
    args.extend(
        identity::service_account_groups()
            .iter()
            .map(|g| format!("--as-group={g}")),
    );
    let out = cp
        .kubectl()
        .args(&args)
        .output()
        .unwrap_or_else(|e| panic!("kubectl auth can-i: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_can_i(&text)
}

/// `Resources  Non-Resource URLs  Resource Names  Verbs` rows: the resource is the first
/// word unless the row starts blank (a non-resource URL row); the three lists are in brackets.
fn parse_can_i(text: &str) -> Rules {
    let mut rules = Rules::new();
    for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let resource = if line.starts_with(char::is_whitespace) {
            ""
        } else {
            line.split_whitespace().next().unwrap_or_default()
        };
        let lists: Vec<&str> = line
            .split('[')
            .skip(1)
            .filter_map(|l| l.split(']').next())
            .collect();
        let [urls, names, verbs] = lists[..] else {
            panic!("unexpected can-i row: {line:?}");
        };
        assert!(names.is_empty(), "a rule limited to names: {line:?}");
        let key = if resource.is_empty() {
            urls.to_owned()
        } else {
            resource.to_owned()
        };
        rules
            .entry(key)
            .or_default()
            .extend(verbs.split_whitespace().map(String::from));
    }
    rules
}

fn rules(expected: &[(&str, &[&str])]) -> Rules {
    expected
        .iter()
        .map(|(r, verbs)| {
            (
                (*r).to_owned(),
                verbs.iter().map(|v| (*v).to_owned()).collect(),
            )
        })
        .collect()
}

/// What Kubernetes' default ClusterRoles (system:basic-user, system:discovery,
/// system:public-info-viewer, system:service-account-issuer-discovery and the
/// ClusterTrustBundle reader) grant every authenticated user; the project adds none of it.
const GRANTED_TO_EVERYONE: [&str; 5] = [
    "selfsubjectreviews.authentication.k8s.io",
    "selfsubjectaccessreviews.authorization.k8s.io",
    "selfsubjectrulesreviews.authorization.k8s.io",
    "clustertrustbundles.certificates.k8s.io",
    // Non-resource URLs (discovery, version, health).
    "/",
];

fn without_defaults(all: Rules) -> Rules {
    all.into_iter()
        .filter(|(k, _)| {
            !GRANTED_TO_EVERYONE
                .iter()
                .any(|d| k == d || (d == &"/" && k.starts_with('/')))
        })
        .collect()
}

#[test]
fn each_service_account_may_do_what_design_needs_and_no_more() {
    let cp = ControlPlane::shared();
    identity::apply_rbac(cp);
    // An identity in the same groups without bindings of its own shows what every such
    // ServiceAccount gets from Kubernetes: only the defaults named above.
    let baseline = can_i_list(cp, &identity::service_account_user("nobody"), "default");
    assert!(
        without_defaults(baseline.clone()).is_empty(),
        "an unbound ServiceAccount can do more than Kubernetes' defaults: {baseline:?}"
    );
    let webhook_user = identity::service_account_user(WEBHOOK_SERVICE_ACCOUNT);
    let controller_user = identity::service_account_user(CONTROLLER_SERVICE_ACCOUNT);

    let webhook = rules(&[("taskruns.orchestrator.io", &["list", "watch"])]);
    for ns in [SYSTEM_NAMESPACE, "default"] {
        let got = can_i_list(cp, &webhook_user, ns);
        assert_eq!(without_defaults(got), webhook, "webhook in {ns}");
    }

    let cluster_wide: &[(&str, &[&str])] = &[
        (
            "taskruns.orchestrator.io",
            &["get", "list", "watch", "patch"],
        ),
        ("taskruns.orchestrator.io/status", &["patch"]),
        ("taskruns.orchestrator.io/finalizers", &["update"]),
        ("configmaps", &["get", "list", "watch", "create", "delete"]),
        ("jobs.batch", &["get", "list", "watch", "create", "delete"]),
        ("events.events.k8s.io", &["create"]),
    ];
    let got = can_i_list(cp, &controller_user, "default");
    assert_eq!(without_defaults(got), rules(cluster_wide), "controller");
    // Leases only in its own namespace, for leader election.
    let mut with_lease = cluster_wide.to_vec();
    with_lease.push(("leases.coordination.k8s.io", &["get", "create", "patch"]));
    let got = can_i_list(cp, &controller_user, SYSTEM_NAMESPACE);
    assert_eq!(
        without_defaults(got.clone()),
        rules(&with_lease),
        "controller in {SYSTEM_NAMESPACE}"
    );

    for (who, ns) in [
        (&webhook_user, "default"),
        (&controller_user, SYSTEM_NAMESPACE),
    ] {
        for (resource, verbs) in without_defaults(can_i_list(cp, who, ns)) {
            assert!(
                !resource.contains('*') && !verbs.contains("*"),
                "{who}: wildcard in {resource} {verbs:?}"
            );
        }
    }
    // Spot checks through the authorizer itself: no Secrets, no Pods.
    for (who, verb, resource) in [
        (&controller_user, "get", "secrets"),
        (&controller_user, "list", "pods"),
        (&webhook_user, "get", "taskruns.orchestrator.io"),
        (&webhook_user, "list", "configmaps"),
    ] {
        let out = cp
            .kubectl()
            .args(["auth", "can-i", verb, resource, "--all-namespaces"])
            .arg(format!("--as={who}"))
            .output()
            .unwrap_or_else(|e| panic!("kubectl auth can-i: {e}"));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "no",
            "{who} may {verb} {resource}"
        );
    }
}

/// Whether `kubectl auth can-i` (the API server's own authorizer) says `user` may;
/// `resource` may name a subresource (`taskruns.orchestrator.io/status`).
fn can_i(cp: &ControlPlane, user: &str, verb: &str, resource: &str, ns: &str) -> bool {
    // kubectl reads `resource/x` as the object named x: a subresource is a flag of its own.
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    let out = cp
        .kubectl()
        .args(["auth", "can-i", verb, resource, "-n", ns])
        .arg(format!("--subresource={subresource}"))
        .arg(format!("--as={user}"))
        .output()
        .unwrap_or_else(|e| panic!("kubectl auth can-i: {e}"));
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

/// People get TaskRuns through Kubernetes' built-in roles, as they get Deployments: a
/// namespace's `view` reads them and their status, `edit` and `admin` also create, change and
/// delete them, and none of the three writes their status (the controller's). Without the
/// base's aggregated ClusterRoles, `edit` may not even create one.
#[test]
fn the_built_in_user_roles_cover_taskruns_but_not_their_status() {
    let cp = ControlPlane::shared();
    identity::apply_rbac(cp);
    let ns = "taskrun-users";
    let kubectl = |args: &[&str]| {
        let out = cp.kubectl().args(args).output().expect("kubectl runs");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    kubectl(&["create", "namespace", ns]);
    for role in ["view", "edit", "admin"] {
        let binding = format!("--clusterrole={role}");
        let user = format!("--user={role}-user");
        kubectl(&["create", "rolebinding", role, &binding, &user, "-n", ns]);
    }
    let taskruns = "taskruns.orchestrator.io";
    let status = "taskruns.orchestrator.io/status";
    // The aggregation controller folds the ClusterRoles into each built-in role in a moment
    // after they are applied, each role on its own.
    let deadline = std::time::Instant::now() + WAIT;
    for (user, verb) in [
        ("view-user", "get"),
        ("edit-user", "create"),
        ("admin-user", "create"),
    ] {
        while !can_i(cp, user, verb, taskruns, ns) {
            assert!(
                std::time::Instant::now() < deadline,
                "{user} never came to be let {verb} TaskRuns"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let writes = ["create", "update", "patch", "delete", "deletecollection"];
    for user in ["view-user", "edit-user", "admin-user"] {
        for verb in ["get", "list", "watch"] {
            assert!(can_i(cp, user, verb, taskruns, ns), "{user} may not {verb}");
        }
        assert!(
            can_i(cp, user, "get", status, ns),
            "{user} may not read status"
        );
        for verb in ["update", "patch"] {
            assert!(
                !can_i(cp, user, verb, status, ns),
                "{user} may {verb} status"
            );
        }
        for verb in writes {
            let may = can_i(cp, user, verb, taskruns, ns);
            assert_eq!(may, user != "view-user", "{user} {verb} taskruns");
        }
    }
    // Only where bound.
    assert!(!can_i(cp, "edit-user", "create", taskruns, "default"));
}

/// The Deployment's container args, as the kubelet would run them here: loopback ports
/// instead of 0.0.0.0 (the map: container port to local port), the mounted paths under
/// `root`, `$(VAR)` expanded.
fn container_command(
    deployment: &Value,
    root: &Path,
    env: &[(&str, &str)],
) -> (Vec<String>, BTreeMap<u16, u16>) {
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let mut ports = BTreeMap::new();
    let args = container["args"]
        .as_array()
        .unwrap_or_else(|| panic!("no args in {container}"))
        .iter()
        .map(|a| {
            let mut a = a.as_str().unwrap_or_default().to_owned();
            if let Some((flag, port)) = a.split_once("=0.0.0.0:") {
                let port = port.parse().unwrap_or_else(|e| panic!("{a}: {e}"));
                let free = taskrun_tests::free_port();
                ports.insert(port, free);
                a = format!("{flag}=127.0.0.1:{free}");
            }
            for mount in container["volumeMounts"].as_array().into_iter().flatten() {
                let path = mount["mountPath"].as_str().unwrap_or_default();
                let local = root.join(path.trim_start_matches('/'));
                a = a.replace(&format!("={path}"), &format!("={}", local.display()));
            }
            for (name, value) in env {
                a = a.replace(&format!("$({name})"), value);
            }
            a
        })
        .collect();
    (args, ports)
}

/// The container's readiness and liveness probes: (path, container port). Each must be a
/// plain HTTP GET: the webhook's HTTPS port shares its connection cap with the API server's
/// calls, and a probe queued behind them would restart a busy pod.
fn probes(deployment: &Value) -> Vec<(String, u16)> {
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    ["readinessProbe", "livenessProbe"]
        .into_iter()
        .map(|probe| {
            let get = &container[probe]["httpGet"];
            let scheme = get["scheme"].as_str().unwrap_or("HTTP");
            assert_eq!(scheme, "HTTP", "{probe} of {container}");
            let port = match &get["port"] {
                Value::String(name) => container["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| p["name"] == name.as_str())
                    .and_then(|p| p["containerPort"].as_u64()),
                number => number.as_u64(),
            };
            let port = port
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or_else(|| panic!("{probe}: no port in {container}"));
            let path = get["path"]
                .as_str()
                .unwrap_or_else(|| panic!("{probe}: no path"));
            (path.to_owned(), port)
        })
        .collect()
}

#[tokio::test]
async fn the_deployments_flags_start_both_binaries_under_their_service_accounts() {
    let cp = ControlPlane::shared();
    let base = build(cp, "manifests/base");
    let root = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));

    // The volumes as the kubelet projects them: the TLS Secret and the Job template ConfigMap.
    let certs = root.path().join("certs");
    let config = root.path().join("config");
    for dir in [&certs, &config] {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir: {e}"));
    }
    let ca = Ca::new("deploy-test-ca").unwrap_or_else(|e| panic!("CA: {e}"));
    ca.serving(&["127.0.0.1"])
        .and_then(|p| p.write(&certs, "tls"))
        .unwrap_or_else(|e| panic!("serving certificate: {e}"));
    let template = find(&base, "ConfigMap", "taskrun-controller-job-template");
    for (file, text) in template["data"].as_object().into_iter().flatten() {
        std::fs::write(config.join(file), text.as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("write {file}: {e}"));
    }

    let env = [
        ("POD_NAMESPACE", SYSTEM_NAMESPACE),
        ("POD_NAME", "deploy-test"),
    ];
    let mut children = Vec::new();
    let mut probes = Vec::new();
    for (binary, account) in [
        ("taskrun-webhook", WEBHOOK_SERVICE_ACCOUNT),
        ("taskrun-controller", CONTROLLER_SERVICE_ACCOUNT),
    ] {
        let deployment = find(&base, "Deployment", binary);
        let (args, ports) = container_command(deployment, root.path(), &env);
        for (path, port) in self::probes(deployment) {
            let local = *ports
                .get(&port)
                .unwrap_or_else(|| panic!("{binary}: nothing listens on {port}: {args:?}"));
            probes.push((binary, path, local));
        }
        let mut cmd = Command::new(workspace_bin(binary));
        cmd.args(&args)
            .envs(env)
            .env("KUBECONFIG", identity::kubeconfig_as(cp, account));
        let child = spawn_logged(cmd, &format!("deploy-{binary}"))
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        children.push((binary, child));
    }
    let children = std::sync::Mutex::new(children);
    for (binary, path, port) in probes {
        wait_for(&format!("{binary} {path}"), WAIT, || async {
            for (name, child) in children
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter_mut()
            {
                assert!(
                    child.is_running(),
                    "{name} exited:\n{}",
                    std::fs::read_to_string(child.log_path()).unwrap_or_default()
                );
            }
            let body = http_get(([127, 0, 0, 1], port).into(), &path).await?;
            body.starts_with("HTTP/1.1 200").then_some(())
        })
        .await;
    }
}

#[test]
fn the_argo_cd_health_check_passes_its_lua_tests() {
    let test = repo_root().join("manifests/argocd/taskrun-health_test.lua");
    let out = Command::new("lua5.1")
        .arg(&test)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run lua5.1 ({e}): install it with hack/install-deps.sh (make test does)")
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !stdout.contains("FAIL"),
        "{} failed:\n{stdout}{}",
        test.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    for status in ["pending", "running", "succeeded", "failed"] {
        assert!(
            stdout.lines().any(|l| l == format!("ok   {status}")),
            "no passing {status} case:\n{stdout}"
        );
    }
}
