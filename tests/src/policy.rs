//! Requests the real API server refuses for a while: a ValidatingAdmissionPolicy bound to one
//! namespace, as a quota or another team's admission policy would refuse them.

use std::fmt::Debug;
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::wait_for;

/// How long the API server may take to apply a new policy.
const IN_FORCE: Duration = Duration::from_secs(60);

/// A policy and its binding, both named `name`; in force until `lift`.
pub struct Refusal {
    name: String,
    policies: Api<ValidatingAdmissionPolicy>,
    bindings: Api<ValidatingAdmissionPolicyBinding>,
}

impl Refusal {
    /// Refuses every request in namespace `ns` that `rule` (one of `matchConstraints`'
    /// resourceRules) matches, with `message` and the status `reason` (`Forbidden`: 403;
    /// `Invalid`: 422, also what a policy that names no reason answers). The API server applies
    /// it a moment later: the caller waits until a request is refused.
    pub async fn start(
        client: &Client,
        ns: &str,
        rule: serde_json::Value,
        reason: &str,
        message: &str,
    ) -> Self {
        let name = format!("refuse-{ns}");
        let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
        let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
        let policy = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [rule]},
                "validations": [{"expression": "false", "message": message, "reason": reason}],
            },
        }))
        .expect("a policy");
        let binding = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}},
            },
        }))
        .expect("a binding");
        let params = PostParams::default();
        policies
            .create(&params, &policy)
            .await
            .expect("create the policy");
        bindings
            .create(&params, &binding)
            .await
            .expect("bind the policy");
        Refusal {
            name,
            policies,
            bindings,
        }
    }

    /// Refuses every create in `ns` of `probe`'s kind (`reason`, `message`), once the API
    /// server applies it: until then `probe` is created as a dry run.
    pub async fn of_creates<K>(
        client: &Client,
        ns: &str,
        probe: K,
        reason: &str,
        message: &str,
    ) -> Self
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Clone
            + Debug
            + Serialize
            + DeserializeOwned,
    {
        let rule = json!({"apiGroups": [K::group(&())], "apiVersions": [K::version(&())],
                          "operations": ["CREATE"], "resources": [K::plural(&())]});
        let refusal = Self::start(client, ns, rule, reason, message).await;
        let api: Api<K> = Api::namespaced(client.clone(), ns);
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        let what = format!("the policy to refuse {}", K::plural(&()));
        wait_for(&what, IN_FORCE, || async {
            matches!(api.create(&dry_run, &probe).await,
                     Err(kube::Error::Api(e)) if e.message.contains(message))
            .then_some(())
        })
        .await;
        refusal
    }

    /// Refuses every Job create in `ns` (`reason`, `message`), once the API server applies it.
    pub async fn of_job_creates(client: &Client, ns: &str, reason: &str, message: &str) -> Self {
        let probe: Job = serde_json::from_value(json!({
            "metadata": {"name": "probe"},
            "spec": {"template": {"spec": {"restartPolicy": "Never",
                     "containers": [{"name": "c", "image": "registry.example/probe"}]}}},
        }))
        .expect("a Job");
        Self::of_creates(client, ns, probe, reason, message).await
    }

    pub async fn lift(self) {
        let params = DeleteParams::default();
        self.bindings
            .delete(&self.name, &params)
            .await
            .expect("unbind the policy");
        self.policies
            .delete(&self.name, &params)
            .await
            .expect("delete the policy");
    }
}
