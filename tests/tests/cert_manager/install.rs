//! Installing the pieces: cert-manager built and started, the overlay's resources adapted to
//! a webhook on loopback, and the processes the test watches.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use taskrun_tests::{ChildGuard, ControlPlane, identity, repo_root, spawn_logged, workspace_bin};

use crate::{SERVING, SYSTEM_NS, kubectl, path_str};

/// The cert-manager build's cache directory: `bin/` and `crds/`.
pub(crate) fn build_cert_manager() -> PathBuf {
    taskrun_tests::tools::build("certmanager")
}

/// The processes this test starts; a wait fails at once, with the log tail, when one died.
#[derive(Default)]
pub(crate) struct Procs(Vec<(String, ChildGuard)>);

impl Procs {
    pub(crate) fn start_go(&mut self, cp: &ControlPlane, cm_dir: &Path, name: &str) {
        let mut cmd = Command::new(cm_dir.join("bin").join(name));
        cmd.arg(format!("--kubeconfig={}", cp.kubeconfig().display()))
            .arg("-v=2");
        self.spawn(cmd, name);
    }

    pub(crate) fn start_webhook(&mut self, cp: &ControlPlane, addr: SocketAddr, cert_dir: &Path) {
        let mut cmd = Command::new(workspace_bin("taskrun-webhook"));
        // Its ServiceAccount with the RBAC of manifests/base, as in a cluster.
        let kubeconfig = identity::kubeconfig_as(cp, identity::WEBHOOK_SERVICE_ACCOUNT);
        cmd.env("KUBECONFIG", kubeconfig)
            .arg(format!("--listen={addr}"))
            .arg(format!("--cert-dir={}", cert_dir.display()))
            .arg("--metrics-listen=off")
            .arg("--log-format=text");
        self.spawn(cmd, "taskrun-webhook");
    }

    fn spawn(&mut self, cmd: Command, name: &str) {
        let child = spawn_logged(cmd, name).unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.0.push((name.to_owned(), child));
    }

    pub(crate) fn check(&mut self) {
        for (name, child) in &mut self.0 {
            if !child.is_running() {
                let log = std::fs::read_to_string(child.log_path()).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                panic!(
                    "{name} exited; last lines of {}:\n{}",
                    child.log_path().display(),
                    lines[lines.len().saturating_sub(30)..].join("\n")
                );
            }
        }
    }
}

/// The overlay's Namespace, Issuers, Certificates and webhook configurations, from
/// `kubectl kustomize`, adapted to a webhook on this machine's loopback (see below).
pub(crate) fn overlay_objects(cp: &ControlPlane, webhook: SocketAddr) -> Vec<Value> {
    let overlay = repo_root().join("manifests/overlays/cert-manager");
    let yaml = kubectl(cp, &["kustomize", &path_str(&overlay)]);
    let mut selected = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(&yaml) {
        let object: Value = serde::Deserialize::deserialize(document)
            .unwrap_or_else(|e| panic!("kubectl kustomize printed bad YAML: {e}"));
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "Namespace" | "Issuer" => selected.push(object),
            "Certificate" => selected.push(loopback_certificate(object)),
            "ValidatingWebhookConfiguration" | "MutatingWebhookConfiguration" => {
                selected.push(loopback_webhooks(object, webhook))
            }
            _ => {}
        }
    }
    selected
}

/// The overlay's serving Certificate names the Service's DNS names; here kube-apiserver
/// reaches the webhook at https://127.0.0.1, so this test variant asks for that IP address
/// instead. Everything else (issuer, duration, key and rotation policy, usages) is the
/// overlay's.
pub(crate) fn loopback_certificate(mut certificate: Value) -> Value {
    if certificate["metadata"]["name"] == SERVING {
        let spec = &mut certificate["spec"];
        assert!(
            spec["dnsNames"].is_array(),
            "the overlay's serving Certificate: {spec}"
        );
        spec.as_object_mut().map(|s| s.remove("dnsNames"));
        spec["ipAddresses"] = json!(["127.0.0.1"]);
    }
    certificate
}

/// A webhook configuration from the overlay, calling `https://<addr><path>` instead of the
/// Service (there is no Service routing on this control plane). The inject-ca-from
/// annotation, rules, selectors and policies stay as they are.
pub(crate) fn loopback_webhooks(mut config: Value, addr: SocketAddr) -> Value {
    assert_eq!(
        config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!("{SYSTEM_NS}/{SERVING}"),
        "the overlay annotates {} for cainjector",
        config["kind"]
    );
    for webhook in config["webhooks"].as_array_mut().into_iter().flatten() {
        let path = webhook["clientConfig"]["service"]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("webhook without a service path: {webhook}"))
            .to_owned();
        webhook["clientConfig"] = json!({"url": format!("https://{addr}{path}")});
    }
    config
}
