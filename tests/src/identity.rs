//! The webhook and the controller run in the tests as they do in a cluster: as their
//! ServiceAccounts, with exactly the RBAC of `manifests/base` (client certificates for the
//! service-account user names, which RBAC matches like a token of that ServiceAccount).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

use crate::{ControlPlane, repo_root};

/// The operator's namespace in `manifests/base` (ServiceAccounts, the Lease).
pub const SYSTEM_NAMESPACE: &str = "taskrun-system";
pub const WEBHOOK_SERVICE_ACCOUNT: &str = "taskrun-webhook";
pub const CONTROLLER_SERVICE_ACCOUNT: &str = "taskrun-controller";

/// The kinds of `manifests/base` that make up identities and their permissions.
const RBAC_KINDS: [&str; 6] = [
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
];

/// `system:serviceaccount:<ns>:<name>`.
pub fn service_account_user(name: &str) -> String {
    format!("system:serviceaccount:{SYSTEM_NAMESPACE}:{name}")
}

/// The groups the API server puts every token of a ServiceAccount of the system namespace in.
pub fn service_account_groups() -> [String; 3] {
    [
        "system:serviceaccounts".to_owned(),
        format!("system:serviceaccounts:{SYSTEM_NAMESPACE}"),
        "system:authenticated".to_owned(),
    ]
}

/// A kubeconfig authenticating as the ServiceAccount `name` of `manifests/base`, with the
/// base's RBAC applied to the cluster first (once per test binary).
pub fn kubeconfig_as(cp: &ControlPlane, name: &str) -> PathBuf {
    apply_rbac(cp);
    let groups = service_account_groups();
    let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    cp.kubeconfig_for(&service_account_user(name), &groups)
}

/// Applies the Namespace, ServiceAccounts, Roles and bindings of `kubectl kustomize
/// manifests/base` (server-side apply), once per test binary.
pub fn apply_rbac(cp: &ControlPlane) {
    static APPLIED: OnceLock<Result<(), String>> = OnceLock::new();
    let applied = APPLIED.get_or_init(|| {
        let objects: Vec<Value> = kustomize(cp, "manifests/base")?
            .into_iter()
            .filter(|o| RBAC_KINDS.contains(&o["kind"].as_str().unwrap_or_default()))
            .collect();
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
        let out = kubectl_stdin(
            cp,
            &[
                "apply",
                "--server-side",
                "--field-manager=taskrun-tests",
                "-f",
                "-",
            ],
            &list.to_string(),
        );
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "kubectl apply of the base's RBAC failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = applied {
        panic!("{e}");
    }
}

/// The objects `kubectl kustomize <dir>` prints (`dir` relative to the repository root).
pub fn kustomize(cp: &ControlPlane, dir: &str) -> Result<Vec<Value>, String> {
    let path = repo_root().join(dir);
    let out = cp
        .kubectl()
        .arg("kustomize")
        .arg(&path)
        .output()
        .map_err(|e| format!("cannot run kubectl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "kubectl kustomize {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse_documents(&String::from_utf8_lossy(&out.stdout))
}

/// Every document of a multi-document YAML stream.
pub fn parse_documents(yaml: &str) -> Result<Vec<Value>, String> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| {
            <Value as serde::Deserialize>::deserialize(d).map_err(|e| format!("bad YAML: {e}"))
        })
        .filter(|o| !matches!(o, Ok(Value::Null)))
        .collect()
}

/// `kubectl` (admin) with `stdin` fed in; the caller checks the status.
pub fn kubectl_stdin(cp: &ControlPlane, args: &[&str], stdin: &str) -> Output {
    let run = || -> std::io::Result<Output> {
        let mut child = cp
            .kubectl()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin.as_bytes())?;
        }
        child.wait_with_output()
    };
    run().unwrap_or_else(|e| panic!("cannot run kubectl {args:?}: {e}"))
}
